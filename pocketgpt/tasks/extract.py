"""Extracting person, time and organisation from a template sentence (the tutorials' NER few-shot
example). English references are JSON ({"person", "time", "organization"}), Chinese ones read
"人物: 张伟; 时间: 2019年; 机构: 清华大学"; either form, with English or Chinese keys, is accepted in
both languages. Partial credit: the fraction of the three fields that are right."""

from __future__ import annotations

import json
import random
import re

from pocketgpt.tasks.answers import json_object, same_value
from pocketgpt.tasks.task import Example, Task, example, templates_for

NAME = "extract"
FIELDS = ("person", "time", "organization")
ZH_KEYS = {"person": "人物", "time": "时间", "organization": "机构"}
ALIASES = {"person": "person", "name": "person", "人物": "person", "人名": "person", "姓名": "person",
           "time": "time", "date": "time", "时间": "time", "日期": "time",
           "organization": "organization", "organisation": "organization", "org": "organization",
           "机构": "organization", "组织": "organization", "单位": "organization"}
PEOPLE = {"en": ["Alice Smith", "John Chen", "Maria Garcia", "David Brown", "Emma Wilson", "Kenji Sato",
                 "Laura Martin", "Peter Novak"],
          "zh": ["张伟", "李娜", "王强", "刘洋", "陈静", "赵敏", "孙浩", "周杰"]}
ORGS = {"en": ["Google", "the Red Cross", "Oxford University", "the World Bank", "Microsoft", "NASA",
               "the BBC", "Tsinghua University"],
        "zh": ["清华大学", "北京大学", "中国银行", "人民日报社", "华为公司", "中国科学院", "新华社", "复旦大学"]}
MONTHS = ["January", "March", "May", "July", "September", "November"]
SENTENCES = {
    "en": ["{person} joined {org} in {time}.", "In {time}, {person} started working at {org}.",
           "{Org} hired {person} in {time}.", "{person} left {org} in {time}."],
    "zh": ["{time}，{person}加入了{org}。", "{person}于{time}进入{org}工作。", "{org}在{time}聘请了{person}。",
           "{time}{person}离开了{org}。"],
}
INSTRUCTIONS = {
    "en": ["Extract the person, time and organization from the sentence. Answer in JSON with keys "
           "person, time, organization.",
           "Find the person, the time and the organization mentioned below. Reply as JSON "
           "(keys: person, time, organization).",
           "Read the sentence and return JSON with the keys person, time and organization.",
           "Identify the person, the time and the organization; answer as JSON (person, time, organization).",
           "Extract entities as JSON with keys person, time, organization.",
           "Who, when and which organization? Give JSON with keys person, time, organization.",
           "Pull out the person, time and organization from this sentence as JSON "
           "with the keys person, time and organization.",
           "Give the person, time and organization in this sentence as a JSON object (person, time, organization)."],
    "zh": ["从句子中抽取人物、时间和机构，按“人物: ...; 时间: ...; 机构: ...”的格式回答。",
           "找出下面句子里的人物、时间和机构。格式：人物: ...; 时间: ...; 机构: ...",
           "请识别句中的人名、时间和机构名称，用“人物: ...; 时间: ...; 机构: ...”回答。",
           "抽取句子中的实体（人物、时间、机构），格式为：人物: ...; 时间: ...; 机构: ...",
           "读下面的句子，写出人物、时间、机构。格式：人物: ...; 时间: ...; 机构: ...",
           "句中的人物、时间和机构分别是什么？按“人物: ...; 时间: ...; 机构: ...”回答。",
           "这句话提到了谁、什么时间、哪个机构？回答格式：人物: ...; 时间: ...; 机构: ...",
           "请列出句中的人物、时间和机构，格式：人物: ...; 时间: ...; 机构: ..."],
}


def make(rng: random.Random, lang: str, split: str) -> Example:
    person, org = rng.choice(PEOPLE[lang]), rng.choice(ORGS[lang])
    year = rng.randint(1990, 2024)
    if lang == "en":
        time = f"{rng.choice(MONTHS)} {year}" if rng.random() < 0.5 else str(year)
    else:
        time = f"{year}年{rng.randint(1, 12)}月" if rng.random() < 0.5 else f"{year}年"
    sentence = rng.choice(SENTENCES[lang])  # content frames are shared; the request phrasing is held out
    sentence = sentence.format(person=person, org=org, Org=org[:1].upper() + org[1:], time=time)
    fields = {"person": person, "time": time, "organization": org}
    if lang == "en":
        output = json.dumps(fields, ensure_ascii=False)
    else:
        output = "; ".join(f"{ZH_KEYS[k]}: {fields[k]}" for k in FIELDS)
    instruction = rng.choice(templates_for(INSTRUCTIONS[lang], split))
    return example(NAME, lang, instruction, sentence, output, fields=fields)


def read_fields(answer: str) -> dict[str, str]:
    """{"person", "time", "organization"} from a JSON object or "key: value; key: value" text."""
    obj = json_object(answer)
    if obj is None:
        obj = {}
        for part in re.split(r"[;；\n]+", answer):
            m = re.match(r"\s*([^:：]+)[:：](.*)", part)
            if m:
                obj[m.group(1).strip()] = m.group(2).strip()
    return {ALIASES[k.strip().lower()]: str(v) for k, v in obj.items() if k.strip().lower() in ALIASES}


def score(ex: Example, answer: str) -> float:
    """Fraction of the three fields whose value matches (case, spacing, edge punctuation and a leading
    "the" ignored)."""
    got, want = read_fields(answer), ex["meta"]["fields"]
    return sum(k in got and same_value(_bare(got[k]), _bare(want[k])) for k in FIELDS) / len(FIELDS)


def _bare(value: str) -> str:
    """"the Red Cross" and "Red Cross" name the same organisation."""
    return re.sub(r"(?i)^the\s+", "", value.strip())


TASK = Task(NAME, "extract person / time / organization from a sentence (NER)", make, score)
