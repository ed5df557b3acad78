"""Format following: answer with a JSON object that has exactly the keys asked for, filled from a
short fact sentence. Numbers may be JSON numbers or strings ("12" == 12). An answer with no JSON
object scores 0; otherwise partial credit: right values over the larger of (keys asked, keys given),
so extra keys cost as much as missing ones."""

from __future__ import annotations

import json
import random

from pocketgpt.tasks.answers import json_object, same_value
from pocketgpt.tasks.task import Example, Task, example, templates_for

NAME = "json_format"
NAMES = {"en": ["Alice", "Bob", "Chen Jing", "Maria", "Tom", "Yuki"], "zh": ["小红", "小明", "李娜", "王强", "张伟", "陈静"]}
PLACES = {"en": [("Paris", "France"), ("Tokyo", "Japan"), ("Shanghai", "China"), ("Toronto", "Canada"),
                 ("Cairo", "Egypt"), ("Berlin", "Germany")],
          "zh": [("巴黎", "法国"), ("东京", "日本"), ("上海", "中国"), ("多伦多", "加拿大"), ("开罗", "埃及"), ("柏林", "德国")]}
GOODS = {"en": ["book", "lamp", "bicycle", "teapot", "backpack", "umbrella"], "zh": ["书", "台灯", "自行车", "茶壶", "背包", "雨伞"]}
FACTS = {  # key set -> sentence per language
    ("name", "age"): {"en": "{name} is {age} years old.", "zh": "{name}今年{age}岁。"},
    ("city", "country"): {"en": "{city} is a city in {country}.", "zh": "{city}是{country}的一个城市。"},
    ("item", "price"): {"en": "The {item} costs {price} dollars.", "zh": "{item}的价格是{price}元。"},
}
INSTRUCTIONS = {
    "en": ["Answer in JSON with the keys {keys}.", "Return a JSON object with exactly these keys: {keys}.",
           "Give the facts below as JSON, using the keys {keys}.", "Reply with JSON that has the keys {keys}.",
           "Write this as a JSON object with keys {keys}.", "Format the answer as JSON: keys {keys}.",
           "Output only JSON with the fields {keys}.", "Produce a JSON object whose keys are {keys}."],
    "zh": ["用 JSON 回答，键为 {keys}。", "请返回一个 JSON 对象，只包含这些键：{keys}。", "把下面的信息写成 JSON，键是 {keys}。",
           "请用 JSON 格式回答，键为 {keys}。", "把这句话转换成 JSON，包含键 {keys}。", "输出一个 JSON 对象，键是 {keys}。",
           "只输出 JSON，字段为 {keys}。", "以 JSON 形式给出 {keys} 两个字段。"],
}


def make(rng: random.Random, lang: str, split: str) -> Example:
    keys = rng.choice(list(FACTS))
    if keys == ("name", "age"):
        values = {"name": rng.choice(NAMES[lang]), "age": rng.randint(5, 80)}
    elif keys == ("city", "country"):
        city, country = rng.choice(PLACES[lang])
        values = {"city": city, "country": country}
    else:
        values = {"item": rng.choice(GOODS[lang]), "price": rng.randint(2, 99)}
    joiner = " and " if lang == "en" else " 和 "
    instruction = rng.choice(templates_for(INSTRUCTIONS[lang], split)).format(keys=joiner.join(f'"{k}"' for k in keys))
    return example(NAME, lang, instruction, FACTS[keys][lang].format(**values), json.dumps(values, ensure_ascii=False),
                   keys=list(keys))


def score(ex: Example, answer: str) -> float:
    """0 without a JSON object; else correct values / max(keys asked, keys given)."""
    got, want = json_object(answer), json.loads(ex["output"])
    if got is None:
        return 0.0
    right = sum(k in got and same_value(got[k], v) for k, v in want.items())
    return right / max(len(want), len(got))


TASK = Task(NAME, "answer in JSON with the given keys (format following)", make, score)
