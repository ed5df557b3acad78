"""Token shards and batch sources: round trips (Chinese too), the deterministic split, checksums,
process-pool == single process, bad input, and batches that resume exactly and split across ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pocketgpt.errors import DataError, TokenizerError
from pocketgpt.text import shards
from pocketgpt.text.batches import SequentialBatches, TokenBatches, batches_from_tokens
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.shards import open_shards, verify_shards, write_shards
from pocketgpt.text.specials import EOT, RESERVED

DOCS = ["It is a truth universally acknowledged, that a single man in possession of a good fortune.",
        "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
        "周一上班真的很丧。 Monday again.", "Emma Woodhouse, handsome, clever, and rich.",
        "人民日报：今天天气很好，大家都出去玩了。"] * 8 + [f"document number {i} 第{i}篇" for i in range(40)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train("\n\n".join(DOCS), 400, special_tokens=RESERVED, progress=False)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    return path


def test_round_trip_split_and_meta(tok, corpus, tmp_path):
    meta = write_shards([corpus], tok, tmp_path / "s", val_fraction=0.2, progress=False)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    train, val = open_shards(tmp_path / "s", "train"), open_shards(tmp_path / "s", "val")
    assert len(train) == meta["splits"]["train"]["n_tokens"] and len(val) > 0
    eot = tok.special_tokens[EOT]
    docs = []
    for stream in (train, val):
        ids = stream.window(0, len(stream)).tolist()
        assert ids[-1] == eot
        docs += [tok.decode(d) for d in _split(ids, eot)]
    assert sorted(docs) == sorted(set(DOCS)) or sorted(docs) == sorted(DOCS)  # exact duplicates stay (clean drops them)
    assert meta["splits"]["train"]["n_docs"] + meta["splits"]["val"]["n_docs"] == len(DOCS)
    verify_shards(tmp_path / "s")
    again = write_shards([corpus], tok, tmp_path / "s2", val_fraction=0.2, progress=False)
    assert again["splits"] == meta["splits"]  # the split is a function of the text


def _split(ids, eot):
    doc = []
    for t in ids:
        if t == eot:
            yield doc
            doc = []
        else:
            doc.append(t)


def test_shards_are_cut_at_the_size_and_windows_cross_them(tok, corpus, tmp_path):
    write_shards([corpus], tok, tmp_path / "one", val_fraction=0.0, progress=False)
    meta = write_shards([corpus], tok, tmp_path / "many", val_fraction=0.0, shard_tokens=100, progress=False)
    assert len(meta["splits"]["train"]["shards"]) > 3
    a, b = open_shards(tmp_path / "one"), open_shards(tmp_path / "many")
    assert len(a) == len(b)
    assert np.array_equal(a.window(90, 230), b.window(90, 230))


def test_process_pool_writes_identical_bytes(tok, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("\n\n".join(DOCS * 30), encoding="utf-8")  # > one chunk of documents
    write_shards([path], tok, tmp_path / "p1", processes=1, progress=False)
    write_shards([path], tok, tmp_path / "p2", processes=2, progress=False)
    for name in ("train_0000.bin", "val_0000.bin"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes()


def test_checksum_catches_a_flipped_byte(tok, corpus, tmp_path):
    write_shards([corpus], tok, tmp_path / "s", progress=False)
    shard = tmp_path / "s" / "train_0000.bin"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train_0000.bin: checksum mismatch"):
        verify_shards(tmp_path / "s")


def test_bad_inputs_are_named(tok, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        write_shards([empty], tok, tmp_path / "e", progress=False)
    binary = tmp_path / "image.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="UTF-8"):
        write_shards([binary], tok, tmp_path / "b", progress=False)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text\x00with\x00nul bytes")
    with pytest.raises(DataError, match="binary"):
        write_shards([nul], tok, tmp_path / "n", progress=False)
    with pytest.raises(DataError, match="uint32"):  # a 70,000-token vocabulary cannot be stored as uint16
        shards._dtype("uint16", 70_000)
    assert shards._dtype("auto", 70_000) is np.uint32 and shards._dtype("auto", 50_257) is np.uint16
    no_eot = Tokenizer.train("abc abc abd", 260, special_tokens=["<|x|>"], progress=False)
    with pytest.raises(TokenizerError, match=EOT):
        write_shards([empty], no_eot, tmp_path / "x", progress=False)


def test_a_corpus_smaller_than_one_block_is_refused(tok, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("a few words only", encoding="utf-8")
    write_shards([small], tok, tmp_path / "s", val_fraction=0.0, progress=False)
    with pytest.raises(DataError, match="fewer than block_size"):
        TokenBatches(open_shards(tmp_path / "s"), 2, 256, seed=0)


def test_batches_are_seeded_resumable_and_split_across_ranks():
    ids = np.arange(5000) % 997
    a, b = batches_from_tokens(ids, 4, 16, seed=3), batches_from_tokens(ids, 4, 16, seed=3)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, (next(b) for _ in range(3)), strict=True))
    x, y = first[0]
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    saved = a.state_dict()
    expected = [next(a) for _ in range(2)]
    c = batches_from_tokens(ids, 4, 16, seed=3)
    c.load_state_dict(saved)
    assert all(torch.equal(e[0], next(c)[0]) for e in expected)
    whole = batches_from_tokens(ids, 4, 16, seed=9)
    halves = [batches_from_tokens(ids, 2, 16, seed=9, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        assert torch.equal(next(whole)[0], torch.cat([next(h)[0] for h in halves]))
    assert not torch.equal(next(batches_from_tokens(ids, 4, 16, seed=1))[0], next(batches_from_tokens(ids, 4, 16, seed=2))[0])


def test_sequential_batches_repeat_the_same_windows(tok, corpus, tmp_path):
    write_shards([corpus], tok, tmp_path / "s", val_fraction=0.0, progress=False)
    stream = open_shards(tmp_path / "s")
    one, two = SequentialBatches(stream, 2, 8), SequentialBatches(stream, 2, 8)
    assert torch.equal(next(one)[0], next(two)[0])
    assert torch.equal(next(SequentialBatches(stream, 2, 8))[0][0], torch.from_numpy(stream.window(0, 8)))


def test_tokenize_cli(cli, tok, corpus, tmp_path):
    tok.save(tmp_path / "tok")
    out = cli("tokenize", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "s"), "--json", str(corpus))
    meta = json.loads(out.stdout)
    assert meta["splits"]["train"]["n_tokens"] > 0 and meta["tokens_per_s"] > 0
    assert (tmp_path / "s" / "meta.json").is_file()
    bad = cli("tokenize", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "x"), str(tmp_path / "nope.txt"),
              check=False)
    assert bad.returncode == 2 and "no such file" in bad.stderr
