"""`pocketgpt tokenizer ...` end to end, as a user runs it."""

from __future__ import annotations

import json

from test_bpe_data import TEXT

GPT2_IDS = [32, 7002, 286, 257, 7319, 4608, 6140, 351, 257, 2060, 2239, 13]
DEMO = "It is a truth... 床前明月光，疑是地上霜。"


def test_encode_decode_gpt2(cli):
    out = cli("tokenizer", "encode", "--tokenizer", "gpt2", "--json", "A journey of a thousand miles begins with a single step.")
    assert json.loads(out.stdout) == GPT2_IDS
    out = cli("tokenizer", "decode", "--tokenizer", "gpt2", *map(str, GPT2_IDS))
    assert out.stdout.rstrip("\n") == "A journey of a thousand miles begins with a single step."


def test_train_show_encode_with_a_directory(cli, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = cli("tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "400", "--out", str(tmp_path / "tok"),
              "--special", "<|endoftext|>", "<|user|>", "--json")
    info = json.loads(out.stdout)
    assert info["vocab_size"] == 400 and info["special_tokens"] == {"<|endoftext|>": 398, "<|user|>": 399}
    shown = json.loads(cli("tokenizer", "show", "--tokenizer", str(tmp_path / "tok"), "--json", DEMO).stdout)
    assert "".join(t["text"] for t in shown["tokens"]) .replace("<", "").startswith("It is a truth")
    ids = json.loads(cli("tokenizer", "encode", "--tokenizer", str(tmp_path / "tok"), "--json", DEMO).stdout)
    assert [t["id"] for t in shown["tokens"]] == ids
    assert cli("tokenizer", "show", "--tokenizer", str(tmp_path / "tok"), DEMO).stdout.strip()


def test_show_marks_partial_characters(cli):
    shown = json.loads(cli("tokenizer", "show", "--tokenizer", "gpt2", "--json", "床").stdout)
    # GPT-2 cuts this character into two tokens: each shows its bytes in hex
    assert [t["text"] for t in shown["tokens"]] == ["<e5 ba>", "<8a>"]
    assert shown["n_chars"] == 1 and shown["tokens_per_char"] == 2.0
    human = cli("tokenizer", "show", "--tokenizer", "gpt2", DEMO).stdout
    assert "tokens/char" in human and "<e5>" in human and "|" in human


def test_bad_inputs_are_one_line_errors(cli, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad_ids = tmp_path / "ids.json"
    bad_ids.write_text('["a"]')
    cases = [
        (["tokenizer", "decode", "--file", str(bad_ids)], "expected token ids"),
        (["tokenizer", "encode", "--tokenizer", "gpt7", "x"], "unknown tokenizer"),
        (["tokenizer", "encode", "--tokenizer", str(tmp_path), "x"], "no tokenizer files"),
        (["tokenizer", "train", "--corpus", str(bad), "--out", str(tmp_path / "t")], "byte offset 6"),
        (["tokenizer", "train", "--corpus", str(empty), "--out", str(tmp_path / "t")], "empty"),
        (["tokenizer", "train", "--corpus", str(bad), "--vocab-size", "100", "--out", str(tmp_path / "t")], "too small"),
        (["tokenizer", "encode"], "no input"),
        (["tokenizer", "decode", "--tokenizer", "gpt2", "99999"], "outside"),
    ]
    for argv, message in cases:
        proc = cli(*argv, check=False)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_errors_replace_passes_through(cli, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff world " * 20)
    out = cli("tokenizer", "train", "--corpus", str(bad), "--errors", "replace", "--vocab-size", "270",
              "--out", str(tmp_path / "t"), "--json")
    assert json.loads(out.stdout)["vocab_size"] == 270
