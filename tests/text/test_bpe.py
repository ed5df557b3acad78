"""The Tokenizer: GPT-2's known ids, round trips, special tokens, and the three file formats
checked against each other and against Hugging Face `tokenizers`."""

from __future__ import annotations

import json

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bpe_data import TEXT

from pocketgpt.errors import TokenizerError
from pocketgpt.text import bpe_files
from pocketgpt.text.bpe import Tokenizer, load_tokenizer

SAMPLES = [
    "A journey of a thousand miles begins with a single step.",
    "床前明月光，疑是地上霜。",
    "emoji 🤖🎉 mixed 中文 and English, tabs\tand\nnewlines  ",
    "ﬁ Ünïcödé Ελληνικά русский العربية 日本語 한국어",
    "<|endoftext|>after the end",
]


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.gpt2()


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(TEXT, 600, progress=False)


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("A journey of a thousand miles begins with a single step.") == [
        32, 7002, 286, 257, 7319, 4608, 6140, 351, 257, 2060, 2239, 13,
    ]
    assert gpt2.encode("thousand") == [400, 29910]
    assert gpt2.eot_id == 50256 and gpt2.vocab_size == 50257 and len(gpt2.merges) == 50000


def test_gpt2_matches_tiktoken_r50k_layout(gpt2):
    # tiktoken's own GPT-2 needs a download; instead check the rank layout it uses:
    # bytes first (in GPT-2's printable order), then the merges in order
    assert gpt2.token_bytes(0) == b"!" and gpt2.token_bytes(256) == b" t" and gpt2.token_bytes(50255) == b" gazed"
    assert gpt2.decode([50256]) == "<|endoftext|>"


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_samples(gpt2, trained, text):
    for tok in (gpt2, trained):
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_round_trip_any_unicode(trained, text):
    # lone surrogates are not UTF-8; tiktoken (and we) encode them as U+FFFD
    expected = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert trained.decode(trained.encode(text)) == expected


def test_lone_surrogates_become_replacement_characters(trained):
    assert trained.encode("a\ud800b") == trained.encode("a\ufffdb")


def test_specials(trained):
    eot = trained.eot_id
    assert trained.encode("a<|endoftext|>b")[1] == eot
    assert eot not in trained.encode("a<|endoftext|>b", allowed_special="none")
    ids = trained.add_special_tokens(["<|user|>", "<|assistant|>", "<|endoftext|>"])
    assert ids == [600, 601, eot] and trained.vocab_size == 602
    assert trained.encode("<|user|>hi<|assistant|>")[0] == 600
    assert trained.decode([600]) == "<|user|>"


def test_decode_partial_character_and_bad_ids(gpt2):
    ids = gpt2.encode("床")
    assert len(ids) > 1 and gpt2.decode(ids[:1]) == "\ufffd"
    assert gpt2.decode_bytes(ids) == "床".encode()
    with pytest.raises(TokenizerError, match="outside"):
        gpt2.decode([50257])
    with pytest.raises(TokenizerError, match="outside"):
        gpt2.token_bytes(-1)


def test_decode_accepts_tensors_and_arrays(gpt2):
    import numpy as np
    import torch

    ids = gpt2.encode("床前明月光")
    assert gpt2.decode(torch.tensor(ids)) == gpt2.decode(np.array(ids)) == "床前明月光"


def test_encode_batch(trained):
    assert trained.encode_batch(SAMPLES) == [trained.encode(s) for s in SAMPLES]


def _only(directory, keep):
    for f in directory.iterdir():
        if f.name not in keep:
            f.unlink()
    return directory


@pytest.mark.parametrize("keep", [
    {bpe_files.OURS}, {bpe_files.VOCAB, bpe_files.MERGES}, {bpe_files.TIKTOKEN},
])
def test_save_load_each_format_gives_identical_ids(trained, tmp_path, keep):
    trained.save(tmp_path)
    assert {f.name for f in tmp_path.iterdir()} == {bpe_files.OURS, bpe_files.VOCAB, bpe_files.MERGES, bpe_files.TIKTOKEN}
    loaded = Tokenizer.load(_only(tmp_path, keep))
    for text in SAMPLES + [TEXT]:
        assert loaded.encode(text) == trained.encode(text)
    assert loaded.merges == trained.merges
    assert loaded.eot_id == trained.eot_id


def test_saved_files_are_what_the_formats_say(trained, tmp_path):
    trained.save(tmp_path)
    doc = json.loads((tmp_path / bpe_files.OURS).read_text())
    assert doc["version"] == 2 and doc["pattern"] == "gpt2" and len(doc["merges"]) == len(trained.merges)
    # the tiktoken file loads with tiktoken's own reader
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(tmp_path / bpe_files.TIKTOKEN))
    enc = tiktoken.Encoding("t", pat_str=trained.pat_str, mergeable_ranks=ranks, special_tokens={})
    assert enc.encode_ordinary(TEXT) == trained.encode(TEXT)
    vocab = json.loads((tmp_path / bpe_files.VOCAB).read_text())
    assert vocab["Ġ"] == 32 and vocab["<|endoftext|>"] == trained.eot_id


def test_gpt2_files_round_trip_through_our_formats(gpt2, tmp_path):
    gpt2.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode(SAMPLES[0] + SAMPLES[1]) == gpt2.encode(SAMPLES[0] + SAMPLES[1])


def test_hf_tokenizers_reads_our_vocab_and_merges(trained, gpt2, tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    for tok in (trained, gpt2):
        d = tmp_path / tok.name
        tok.save(d)
        hf = ByteLevelBPETokenizer(str(d / bpe_files.VOCAB), str(d / bpe_files.MERGES))
        for text in SAMPLES[:4] + [TEXT]:
            assert hf.encode(text).ids == tok.encode(text)


def test_bytes_to_unicode_is_gpt2s():
    table = bpe_files.bytes_to_unicode()
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[ord("a")] == "a" and len(set(table.values())) == 256


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer 'gpt7'.*gpt2"):
        load_tokenizer("gpt7")
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / bpe_files.OURS).write_text("{not json")
    with pytest.raises(TokenizerError, match="not a valid pocketgpt tokenizer"):
        load_tokenizer(tmp_path)
