"""Every built-in task: deterministic by seed, the reference scores 1.0, wrong answers score 0,
Chinese variants render and score, held-out prompts are never training prompts."""

from __future__ import annotations

import json
import re

import pytest

from pocketgpt import tasks
from pocketgpt.errors import DataError
from pocketgpt.tasks import TASKS

CJK = re.compile(r"[\u4e00-\u9fff]")
KEYS = {"task", "lang", "instruction", "input", "output", "meta"}


def prompt(ex: dict) -> str:
    return ex["instruction"] + "\n" + ex["input"]


@pytest.mark.parametrize("name", list(TASKS))
def test_deterministic_by_seed_and_prefix_stable(name):
    task = TASKS[name]
    a, b = task.generate(30, seed=7), task.generate(30, seed=7)
    assert a == b
    assert task.generate(10, seed=7) == a[:10]
    assert task.generate(30, seed=8) != a
    assert json.loads(json.dumps(a, ensure_ascii=False)) == a  # plain JSON data


@pytest.mark.parametrize("name", list(TASKS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_reference_scores_one_and_nonsense_zero(name, split):
    for ex in TASKS[name].generate(200, seed=1, split=split):
        assert set(ex) == KEYS and ex["task"] == name
        assert tasks.score(ex, ex["output"]) == 1.0, ex
        assert tasks.score(ex, "  " + ex["output"] + " \n") == 1.0  # surrounding whitespace is not an error
        assert tasks.score(ex, "I don't know") == 0.0, ex
        assert tasks.score(ex, "") == 0.0


@pytest.mark.parametrize("name", list(TASKS))
def test_chinese_variants_render_and_score(name):
    exs = TASKS[name].generate(40, seed=2, langs=["zh"])
    assert all(ex["lang"] == "zh" and CJK.search(ex["instruction"]) for ex in exs)
    assert all(tasks.score(ex, ex["output"]) == 1.0 for ex in exs)
    en = TASKS[name].generate(40, seed=2, langs=["en"])
    assert all(ex["lang"] == "en" and not CJK.search(ex["instruction"]) for ex in en)


@pytest.mark.parametrize("name", list(TASKS))
def test_held_out_prompts_are_not_training_prompts(name):
    train = {prompt(ex) for ex in TASKS[name].generate(2000, seed=0)}
    test = {prompt(ex) for ex in TASKS[name].generate(300, seed=0, split="test")}
    assert not train & test
    train_instr = {ex["instruction"] for ex in TASKS[name].generate(2000, seed=0)}
    assert not train_instr & {ex["instruction"] for ex in TASKS[name].generate(300, seed=0, split="test")}


def _one(name, lang="en", **meta):
    for ex in TASKS[name].generate(200, seed=3, langs=[lang]):
        if all(ex["meta"].get(k) == v for k, v in meta.items()):
            return ex
    raise AssertionError(f"no {name} example with {meta}")


def test_arithmetic_wrong_number_and_lenient_forms():
    ex = _one("arithmetic", "zh", op="add")
    n = int(ex["output"])
    assert tasks.score(ex, str(n + 1)) == 0.0
    assert tasks.score(ex, str(n).translate(str.maketrans("0123456789", "０１２３４５６７８９"))) == 1.0
    assert tasks.score(ex, f"{ex['meta']['a']} + {ex['meta']['b']} = {n}") == 1.0
    assert tasks.score(ex, f"一共有{n}个") == 1.0
    small = next(e for e in TASKS["arithmetic"].generate(300, seed=0, langs=["zh"]) if e["output"] == "12")
    assert tasks.score(small, "十二个") == 1.0 and tasks.score(small, "答案是十二。") == 1.0


def test_count_letters_strawberry():
    ex = next(e for e in TASKS["count_letters"].generate(3000, seed=0, langs=["zh"])
              if e["meta"] == {"word": "strawberry", "letter": "r"})
    assert ex["output"] == "3" and "strawberry" in ex["instruction"]
    assert tasks.score(ex, "三个") == 1.0 and tasks.score(ex, "2") == 0.0


def test_word_order_partial_credit():
    ex = tasks.get_task("reverse_words").make(__import__("random").Random(0), "en", "train")
    want = ex["output"].split()
    assert tasks.score(ex, ", ".join(want)) == 1.0
    assert tasks.score(ex, " ".join(want[:-1])) == pytest.approx((len(want) - 1) / len(want))
    assert tasks.score(ex, " ".join(want[1:] + want[:1])) == 0.0  # rotated: no word in its place
    zh = _one("reverse_words", "zh")
    assert tasks.score(zh, "、".join(zh["output"].split())) == 1.0


def test_extract_both_formats_and_partial():
    en, zh = _one("extract", "en"), _one("extract", "zh")
    f = zh["meta"]["fields"]
    assert tasks.score(zh, json.dumps(f, ensure_ascii=False)) == 1.0
    assert tasks.score(zh, f"人物：{f['person']}；时间：{f['time']}；机构：{f['organization']}") == 1.0
    assert tasks.score(zh, f"人物: {f['person']}; 时间: 1900年; 机构: 无") == pytest.approx(1 / 3)
    g = en["meta"]["fields"]
    assert tasks.score(en, f"```json\n{json.dumps(g)}\n```") == 1.0
    assert tasks.score(en, f"person: {g['person']}; time: {g['time']}; org: {g['organization']}") == 1.0


def test_sentiment_labels_in_either_language():
    pos = _one("sentiment", "zh", label="positive")
    assert tasks.score(pos, "positive") == 1.0 and tasks.score(pos, "积极") == 1.0
    assert tasks.score(pos, "负面") == 0.0 and tasks.score(pos, "正面或负面") == 0.0


def test_translate_alternatives_and_wrong():
    ex = next(e for e in TASKS["translate"].generate(2000, seed=0) if e["meta"]["accept"] == ["妈妈", "母亲"])
    assert tasks.score(ex, "母亲") == 1.0 and tasks.score(ex, "妈 妈。") == 1.0 and tasks.score(ex, "爸爸") == 0.0
    en = next(e for e in TASKS["translate"].generate(2000, seed=0) if e["meta"]["target"] == "en")
    assert tasks.score(en, en["output"].upper() + ".") == 1.0


def test_json_format_keys():
    ex = _one("json_format", "en", keys=["name", "age"])
    want = json.loads(ex["output"])
    assert tasks.score(ex, json.dumps({"age": str(want["age"]), "name": want["name"]})) == 1.0
    assert tasks.score(ex, json.dumps({**want, "extra": 1})) == pytest.approx(2 / 3)
    assert tasks.score(ex, json.dumps({"name": want["name"]})) == 0.5
    assert tasks.score(ex, f"name: {want['name']}, age: {want['age']}") == 0.0  # not JSON


def test_mix_and_errors():
    mix = tasks.generate(17, seed=0, tasks="sentiment,translate", langs=["zh"])
    assert [e["task"] for e in mix[:4]] == ["sentiment", "translate", "sentiment", "translate"] and len(mix) == 17
    assert mix[2] == TASKS["sentiment"].generate(2, seed=0, langs=["zh"])[1]
    with pytest.raises(DataError, match="unknown task 'chess'; built-in tasks: arithmetic"):
        tasks.generate(3, tasks="chess")
    with pytest.raises(DataError, match="unknown language 'fr'"):
        tasks.generate(3, langs=["fr"])
    with pytest.raises(DataError, match="unknown split"):
        tasks.generate(3, split="dev")
    with pytest.raises(DataError, match="cannot score"):
        tasks.score({"task": "chess"}, "e4")
