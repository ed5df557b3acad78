"""Modelfile parsing: every directive, quoting forms, round trips, and errors that name the line."""

from __future__ import annotations

import pytest

from pocketgpt.errors import PocketError
from pocketgpt.serve.modelfile import Modelfile, ModelfileError, check_parameters

pytestmark = pytest.mark.serve

FULL = '''# a chat model built on tiny
from ./runs/tiny/
ADAPTER ./lora/adapter.safetensors
PARAMETER temperature 0.7
parameter top_k 40
PARAMETER top_p 0.9
PARAMETER min_p 0.05
PARAMETER num_predict -1
PARAMETER stop "<|end|>"
PARAMETER stop """
User:"""
PARAMETER seed 42
PARAMETER repeat_penalty 1.1
PARAMETER num_ctx 2048
SYSTEM """你是一个乐于助人的助手。
Answer briefly, in the user's language."""

TEMPLATE """{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}<|user|>{{ .Prompt }}<|end|><|assistant|>"""
MESSAGE user 周一上班真的很
MESSAGE assistant "爽！\\n\\"Really\\" good."
LICENSE """MIT License
Copyright (c) 2026"""
LICENSE Apache-2.0
'''


def test_every_directive():
    mf = Modelfile.parse(FULL, base_dir="/models")
    assert mf.from_ == "./runs/tiny/"
    assert str(mf.resolve(mf.from_)) == "/models/runs/tiny"
    assert mf.adapter == "./lora/adapter.safetensors"
    assert mf.parameters == {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "num_predict": -1,
                             "stop": ["<|end|>", "\nUser:"], "seed": 42, "repeat_penalty": 1.1, "num_ctx": 2048}
    assert isinstance(mf.parameters["top_k"], int) and isinstance(mf.parameters["temperature"], float)
    assert mf.system == "你是一个乐于助人的助手。\nAnswer briefly, in the user's language."
    assert mf.template.startswith("{{ if .System }}") and mf.template.endswith("<|assistant|>")
    assert mf.messages == [{"role": "user", "content": "周一上班真的很"},
                           {"role": "assistant", "content": '爽！\n"Really" good.'}]
    assert mf.license == ["MIT License\nCopyright (c) 2026", "Apache-2.0"]


def test_render_round_trips():
    mf = Modelfile.parse(FULL, base_dir="/models")
    again = Modelfile.parse(mf.render(), base_dir="/models")
    for attr in ("from_", "adapter", "parameters", "system", "template", "messages", "license"):
        assert getattr(again, attr) == getattr(mf, attr), attr


def test_later_lines_override_and_whitespace_is_kept_inside_quotes():
    mf = Modelfile.parse('FROM a\nSYSTEM first\nSYSTEM "  padded  "\nPARAMETER temperature 1\nPARAMETER temperature 0\n')
    assert mf.system == "  padded  " and mf.parameters == {"temperature": 0.0}


def test_crlf_and_tabs():
    mf = Modelfile.parse("FROM\tbase\r\nPARAMETER\tseed 3\r\n")
    assert mf.from_ == "base" and mf.parameters == {"seed": 3}


def test_load_resolves_paths_relative_to_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Modelfile").write_text("FROM ../model\nSYSTEM 你好\n", encoding="utf-8")
    mf = Modelfile.load(tmp_path / "sub" / "Modelfile")
    assert mf.resolve(mf.from_) == (tmp_path / "sub" / ".." / "model")
    assert mf.system == "你好"


@pytest.mark.parametrize(("text", "line", "words"), [
    ("FROM a\nPARAMETER temperature 0.5\nFRM b\n", 3, ["unknown instruction", "'FRM'", "FROM"]),
    ("FROM a\nPARAMETER temperature hot\n", 2, ["temperature", "not a number", "PARAMETER temperature 0.7"]),
    ("FROM a\nPARAMETER top_k 4.5\n", 2, ["top_k", "not an integer"]),
    ("FROM a\n\nPARAMETER top_p 1.5\n", 3, ["top_p", "out of range", "(0, 1]"]),
    ("FROM a\nPARAMETER temperature -1\n", 2, ["out of range", ">= 0"]),
    ("FROM a\nPARAMETER temperature nan\n", 2, ["not finite"]),
    ("FROM a\nPARAMETER mirostat 1\n", 2, ["unknown parameter", "mirostat", "temperature"]),
    ("FROM a\nPARAMETER num_ctx\n", 2, ["needs a value"]),
    ('FROM a\nSYSTEM """never\nclosed\n', 2, ['"""', "never closed"]),
    ('FROM a\nSYSTEM "open\n', 2, ["unterminated"]),
    ('FROM a\nSYSTEM """x""" extra\n', 2, ["extra", "after the closing"]),
    ("FROM a\nMESSAGE robot hi\n", 2, ["MESSAGE role", "'robot'", "user"]),
    ("FROM a\nADAPTER\n", 2, ["ADAPTER needs a path"]),
    ("FROM\n", 1, ["FROM needs"]),
])
def test_errors_name_the_line(text, line, words):
    with pytest.raises(ModelfileError) as e:
        Modelfile.parse(text, source="Modelfile")
    msg = str(e.value)
    assert f"Modelfile:{line}:" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_missing_from_and_missing_file(tmp_path):
    with pytest.raises(ModelfileError, match="no FROM line"):
        Modelfile.parse("# nothing\nSYSTEM hi\n")
    with pytest.raises(ModelfileError, match="no such Modelfile"):
        Modelfile.load(tmp_path / "Modelfile")
    (tmp_path / "bad").write_bytes(b"FROM \xff\xfe\n")
    with pytest.raises(ModelfileError, match="UTF-8"):
        Modelfile.load(tmp_path / "bad")
    assert issubclass(ModelfileError, PocketError)  # the CLI prints it as one line, exit code 2


def test_check_parameters_from_json():
    assert check_parameters({"temperature": 0, "stop": ["\n\n", "</s>"], "top_k": 5}) == \
        {"temperature": 0.0, "stop": ["\n\n", "</s>"], "top_k": 5}
    assert check_parameters({"stop": "x"}) == {"stop": ["x"]}
    for bad, word in [({"temperature": "hot"}, "not a number"), ({"temperature": True}, "must be a number"),
                      ({"top_p": 2}, "out of range"), ({"nope": 1}, "unknown parameter"),
                      ({"stop": [1]}, "must be a string"), ({"seed": None}, "must be a number")]:
        with pytest.raises(ModelfileError, match=word):
            check_parameters(bad)
