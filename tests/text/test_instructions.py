"""Instruction JSONL: both forms read into conversations, bad lines named by file:line, the
`data instructions` verb writes files that read back and score 1.0."""

from __future__ import annotations

import json

import pytest

from pocketgpt import tasks
from pocketgpt.cli import main as cli_main
from pocketgpt.errors import DataError
from pocketgpt.text.instructions import read_instructions, to_messages, to_record, write_jsonl

GOOD_ALPACA = {"instruction": "把下面的词倒序排列。", "input": "苹果 香蕉", "output": "香蕉 苹果"}
GOOD_MESSAGES = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                              {"role": "assistant", "content": "hello"}]}


def _write(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines))
    return path


def test_both_forms_and_blank_lines(tmp_path):
    f = _write(tmp_path / "d.jsonl", [json.dumps(GOOD_ALPACA, ensure_ascii=False), "", "  ",
                                      json.dumps({**GOOD_ALPACA, "input": "", "system": "简短回答"}, ensure_ascii=False),
                                      json.dumps(GOOD_MESSAGES)])
    data = read_instructions(f)
    assert data.problems == [] and len(data.conversations) == 3
    assert data.conversations[0] == [{"role": "user", "content": "把下面的词倒序排列。\n\n苹果 香蕉"},
                                     {"role": "assistant", "content": "香蕉 苹果"}]
    assert data.conversations[1][0] == {"role": "system", "content": "简短回答"}
    assert data.conversations[1][1]["content"] == "把下面的词倒序排列。"
    assert data.conversations[2] == GOOD_MESSAGES["messages"]


BAD = [
    ('{"instruction": "x", "output": "y"', "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"prompt": "x"}', "expected 'instruction' and 'output' (Alpaca form) or 'messages'; got keys prompt"),
    ('{"instruction": "x", "output": 3}', "'output' must be a string"),
    ('{"instruction": " ", "output": "y"}', "'instruction' is empty"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "message 0: unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
    ('{"messages": "hi"}', "'messages' must be a list"),
    (b'{"instruction": "\xff", "output": "y"}', "not UTF-8"),
]


@pytest.mark.parametrize("line,reason", BAD)
def test_bad_line_fails_with_file_and_line(tmp_path, line, reason):
    f = _write(tmp_path / "bad.jsonl", [json.dumps(GOOD_ALPACA), line, json.dumps(GOOD_MESSAGES)])
    with pytest.raises(DataError) as e:
        read_instructions(f)
    assert f"{f}:2: " in str(e.value) and reason in str(e.value) and "--on-error skip" in str(e.value)


def test_skip_reports_every_bad_line(tmp_path):
    lines = [json.dumps(GOOD_ALPACA)] + [b for b, _ in BAD] + [json.dumps(GOOD_MESSAGES)]
    data = read_instructions(_write(tmp_path / "mixed.jsonl", lines), on_error="skip")
    assert len(data.conversations) == 2 and len(data.problems) == len(BAD)
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in data.problems] == [str(i) for i in range(2, 2 + len(BAD))]


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file; make one with `pocketgpt data instructions"):
        read_instructions(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no usable records"):
        read_instructions(_write(tmp_path / "e.jsonl", ["", '{"a": 1}']), on_error="skip")
    with pytest.raises(DataError, match="unknown --on-error"):
        read_instructions(tmp_path / "e.jsonl", on_error="ignore")


def test_task_examples_round_trip_in_both_formats(tmp_path):
    exs = tasks.generate(24, seed=4)
    for fmt in ("alpaca", "messages"):
        path = tmp_path / f"{fmt}.jsonl"
        assert write_jsonl(path, (to_record(e, fmt) for e in exs)) == 24
        data = read_instructions(path)
        assert data.conversations == [to_messages(e) for e in exs]
        assert [r["task"] for r in data.records] == [e["task"] for e in exs]
        assert "里" in path.read_text(encoding="utf-8") or "，" in path.read_text(encoding="utf-8")  # unescaped
        for conv, ex, rec in zip(data.conversations, exs, data.records, strict=True):
            assert tasks.score(ex, conv[-1]["content"]) == 1.0
            assert tasks.score(rec, conv[-1]["content"]) == 1.0  # a record re-scores in either format


def test_cli_writes_the_same_file_for_the_same_seed(tmp_path, cli, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    out = cli("data", "instructions", "--out", str(a), "--n", "30", "--lang", "zh", "--split", "test", "--json")
    assert json.loads(out.stdout)["examples"] == 30  # the real entry point, once
    assert cli_main(["data", "instructions", "--out", str(b), "--n", "30", "--lang", "zh", "--split", "test"]) == 0
    assert a.read_bytes() == b.read_bytes()
    recs = [json.loads(x) for x in a.read_text(encoding="utf-8").splitlines()]
    assert recs == tasks.generate(30, seed=0, langs=["zh"], split="test")
    assert cli_main(["data", "instructions", "--out", str(a), "--tasks", "chess"]) == 2
    assert "unknown task 'chess'" in capsys.readouterr().err
