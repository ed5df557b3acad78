"""Any id layout: specials first and missing bytes (as in SmolLM2), checked against Hugging Face
`tokenizers` reading the same vocabulary, through every file format, and the layouts we refuse."""

from __future__ import annotations

import json

import pytest
from test_bpe import SAMPLES
from test_bpe_data import TEXT

from pocketgpt.errors import TokenizerError
from pocketgpt.text import bpe_files
from pocketgpt.text.bpe import Tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ABSENT = [4, 6, 19, *range(241, 256)]  # a few C0 controls and bytes that never occur in UTF-8


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return Tokenizer.train(TEXT, 600, progress=False)


@pytest.fixture(scope="module")
def relaid(trained) -> Tokenizer:
    """`trained` renumbered SmolLM2's way: specials at 0.., then the bytes it has, then merges in order."""
    vocab = [bytes([b]) for b in range(256) if b not in ABSENT]
    pairs = [(trained.token_bytes(a), trained.token_bytes(b)) for a, b in trained.merges]
    for a, b in pairs:
        vocab.append(a + b)
    ranks = {t: len(SPECIALS) + i for i, t in enumerate(vocab)}
    return Tokenizer(ranks, {s: i for i, s in enumerate(SPECIALS)}, merges=[(ranks[a], ranks[b]) for a, b in pairs])


def _old_to_new(trained: Tokenizer, relaid: Tokenizer, ids: list[int]) -> list[int]:
    return [relaid.ranks[trained.token_bytes(i)] for i in ids]


def test_relaid_ids_are_the_same_tokens(trained, relaid):
    assert relaid.vocab_size == len(SPECIALS) + 256 - len(ABSENT) + len(trained.merges)
    for text in SAMPLES[:4] + [TEXT[:3000]]:
        ids = relaid.encode(text)
        assert ids == _old_to_new(trained, relaid, trained.encode(text)) and relaid.decode(ids) == text
    assert relaid.encode("<|im_start|>hi<|im_end|>")[::2] == [1, 2]


def test_absent_bytes_dropped_like_hf_tokenizers(relaid, tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    relaid.save(tmp_path)
    hf = ByteLevelBPETokenizer(str(tmp_path / bpe_files.VOCAB), str(tmp_path / bpe_files.MERGES))
    texts = ["a\x04b the\x06re \x04 ..\x04.. ,\x04\"", "plane 5: \U00050000 and \x13\x13 中文\x04字", *SAMPLES[:4]]
    for text in texts:
        assert relaid.encode(text) == hf.encode(text).ids
    assert relaid.decode(relaid.encode("a\x04b")) == "ab"
    assert relaid.encode_batch(texts) == [relaid.encode(t) for t in texts]
    with_special = relaid.encode("x\x04<|im_end|>y")
    assert with_special[1] == 2 and 2 not in relaid.encode("x\x04<|im_end|>y", allowed_special="none")


@pytest.mark.parametrize("keep", [{bpe_files.OURS}, {bpe_files.VOCAB, bpe_files.MERGES}])
def test_relaid_round_trips_through_files(relaid, tmp_path, keep):
    relaid.save(tmp_path)
    for f in tmp_path.iterdir():
        if f.name not in keep:
            f.unlink()
    loaded = Tokenizer.load(tmp_path)
    assert loaded.special_tokens == relaid.special_tokens and loaded.ranks == relaid.ranks
    assert loaded.merges == relaid.merges
    doc = json.loads((tmp_path / bpe_files.OURS).read_text()) if bpe_files.OURS in keep else None
    if doc:
        assert doc["version"] == 2 and doc["byte_ids"][4] is None and doc["byte_ids"][0] == len(SPECIALS)


def test_tiktoken_file_alone_cannot_carry_specials_first(relaid, tmp_path):
    relaid.save(tmp_path)
    for name in (bpe_files.OURS, bpe_files.VOCAB, bpe_files.MERGES):
        (tmp_path / name).unlink()
    with pytest.raises(TokenizerError, match="ranks are not 0..N-1"):
        Tokenizer.load(tmp_path)


def test_version_1_files_still_load(trained, tmp_path):
    doc = {"format": "pocketgpt-tokenizer", "version": 1, "pattern": "gpt2", "pat_str": trained.pat_str,
           "merges": [list(m) for m in trained.merges], "special_tokens": trained.special_tokens}
    (tmp_path / bpe_files.OURS).write_text(json.dumps(doc))
    loaded = Tokenizer.load(tmp_path)
    assert loaded.ranks == trained.ranks and loaded.encode(TEXT[:2000]) == trained.encode(TEXT[:2000])


def test_layouts_tiktoken_cannot_carry_are_refused(trained):
    ranks, merges = dict(trained.ranks), trained.merges
    with pytest.raises(TokenizerError, match="0..N-1"):
        Tokenizer(ranks, {"<|endoftext|>": trained.vocab_size + 5})
    with pytest.raises(TokenizerError, match="rise in merge order"):
        Tokenizer(ranks, trained.special_tokens, merges=[merges[1], merges[0], *merges[2:]])
    with pytest.raises(TokenizerError, match="each must come from one merge"):
        Tokenizer(ranks, trained.special_tokens, merges=merges[:-1])
    with pytest.raises(TokenizerError, match="does not make"):
        Tokenizer(ranks, trained.special_tokens, merges=[(0, 0), *merges])
