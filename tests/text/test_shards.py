"""Token shards: round trips (Chinese too), the deterministic split, checksums, process pool ==
single process, bad input refused without losing the shards already there, and the CLI.
(Batch sources over the shards: test_batches.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocketgpt.atomic import sha256_file
from pocketgpt.errors import DataError, TokenizerError
from pocketgpt.text import shards
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.bpe_files import OURS
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


def test_tokenize_cli(cli, tok, corpus, tmp_path):
    tok.save(tmp_path / "tok")
    out = cli("tokenize", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "s"), "--json",
              "--val-fraction", "0.2", "--processes", "2", str(corpus))
    meta = json.loads(out.stdout)
    assert meta == {**json.loads((tmp_path / "s" / "meta.json").read_text(encoding="utf-8")), **{
        k: meta[k] for k in ("out", "seconds", "tokens_per_s", "bytes_per_token", "disk_bytes")}}
    assert meta["splits"]["train"]["n_tokens"] > 0 and meta["splits"]["val"]["n_docs"] > 0
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    assert sum(s["text_bytes"] for s in meta["splits"].values()) == n_bytes
    assert meta["bytes_per_token"] == round(n_bytes / sum(s["n_tokens"] for s in meta["splits"].values()), 3)
    human = cli("tokenize", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "s"), str(corpus)).stdout
    assert "train:" in human and "val:" in human and "bytes/token" in human and "tokens/s" in human
    bad = cli("tokenize", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "x"), str(tmp_path / "nope.txt"),
              check=False)
    assert bad.returncode == 2 and "nope.txt: no such file" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    bad = cli("tokenize", "--tokenizer", "gpt2", "--out", str(tmp_path / "s"), str(tmp_path / "empty.txt"), check=False)
    assert bad.returncode == 2 and "the corpus is empty" in bad.stderr
    verify_shards(tmp_path / "s")  # the failed run left the earlier shards alone


def test_a_failed_run_leaves_the_previous_shards_intact(tok, corpus, tmp_path):
    out = tmp_path / "s"
    before = write_shards([corpus], tok, out, progress=False)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    good = tmp_path / "good.txt"
    good.write_text("\n\n".join(f"fine text {i}" for i in range(3000)), encoding="utf-8")  # > one chunk first
    binary = tmp_path / "zz.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(DataError, match="zz.bin: not valid UTF-8"):
        write_shards([good, binary], tok, out, progress=False)
    with pytest.raises(DataError, match="uint32"):
        write_shards([corpus], _BigVocab(tok), out, dtype="uint16", progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # no staging dir left behind either
    assert json.loads((out / "meta.json").read_text(encoding="utf-8")) == json.loads(json.dumps(before))
    verify_shards(out)


class _BigVocab:
    """A tokenizer that claims 70,000 ids (too many for uint16)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.special_tokens, self.vocab_size = tok, tok.special_tokens, 70_000

    def save(self, directory):
        return self.tok.save(directory)


def test_meta_describes_the_files_and_the_tokenizer(tok, corpus, tmp_path):
    meta = write_shards([corpus], tok, tmp_path / "s", val_fraction=0.3, shard_tokens=64, progress=False)
    on_disk = json.loads((tmp_path / "s" / "meta.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(meta)) and on_disk["format"] == shards.FORMAT
    assert on_disk["eot_id"] == tok.special_tokens[EOT] and on_disk["tokenizer_sha256"] == sha256_file(tmp_path / "s" / OURS)
    for split in ("train", "val"):
        s = on_disk["splits"][split]
        assert sum(f["n_tokens"] for f in s["shards"]) == s["n_tokens"] == len(open_shards(tmp_path / "s", split))
        for f in s["shards"]:
            assert sha256_file(tmp_path / "s" / f["file"]) == f["sha256"]
            assert (tmp_path / "s" / f["file"]).stat().st_size == 2 * f["n_tokens"]  # uint16
    again = shards.load_tokenizer_of(tmp_path / "s")
    assert again.encode(DOCS[1]) == tok.encode(DOCS[1]) and again.special_tokens == tok.special_tokens
    (tmp_path / "s" / "val_0000.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="val_0000.bin: missing or of the wrong size"):
        open_shards(tmp_path / "s", "val")


def test_every_split_gets_text(tok, tmp_path):
    three = tmp_path / "three.txt"
    three.write_text("first document\n\nsecond document\n\n第三个文件", encoding="utf-8")
    meta = write_shards([three], tok, tmp_path / "a", val_fraction=1e-12, progress=False)  # no hash lands in val
    assert meta["splits"]["val"]["n_docs"] == 1 and meta["splits"]["train"]["n_docs"] == 2
    assert tok.decode(open_shards(tmp_path / "a", "val").window(0, meta["splits"]["val"]["n_tokens"] - 1)) == "第三个文件"
    one = tmp_path / "one.txt"
    one.write_text(" ".join(["a single long document"] * 50), encoding="utf-8")
    meta = write_shards([one], tok, tmp_path / "b", val_fraction=0.1, progress=False)  # val = its tail
    n_train, n_val = meta["splits"]["train"]["n_tokens"], meta["splits"]["val"]["n_tokens"]
    assert n_val - 1 == max(1, int((n_train + n_val - 1) * 0.1)) and n_train > 0  # + the end-of-text token
    whole = np.concatenate([open_shards(tmp_path / "b", s).window(0, n) for s, n in (("train", n_train), ("val", n_val))])
    assert tok.decode(whole[:-1].tolist()) == one.read_text(encoding="utf-8")


def test_special_token_text_inside_a_document_is_plain_text(tok, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(f"a document that mentions {EOT} in its text\n\nanother", encoding="utf-8")
    write_shards([path], tok, tmp_path / "s", val_fraction=0.0, progress=False)
    stream = open_shards(tmp_path / "s")
    ids = stream.window(0, len(stream)).tolist()
    assert ids.count(tok.special_tokens[EOT]) == 2  # only the separators we put after each document
    assert tok.decode(ids) == f"a document that mentions {EOT} in its text{EOT}another{EOT}"


def test_sources_clean_dirs_text_dirs_and_corpus_names(tok, tmp_path, monkeypatch):
    from pocketgpt.text import corpora

    (tmp_path / "cleaned").mkdir()
    (tmp_path / "cleaned" / "cleaned.txt").write_text("from clean\n\n清洗后的文本", encoding="utf-8")
    (tmp_path / "cleaned" / "report.md").write_text("# not text to train on", encoding="utf-8")
    (tmp_path / "texts" / "sub").mkdir(parents=True)
    (tmp_path / "texts" / "b.txt").write_text("second file", encoding="utf-8")
    (tmp_path / "texts" / "sub" / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "austen.txt").write_text("It is a truth universally acknowledged", encoding="utf-8")
    monkeypatch.setattr(corpora, "corpus_paths", lambda name: [tmp_path / f"{name}.txt"])
    write_shards([tmp_path / "cleaned", tmp_path / "texts", "austen"], tok, tmp_path / "s", val_fraction=0.0,
                 progress=False)
    stream = open_shards(tmp_path / "s")
    text = tok.decode(stream.window(0, len(stream)).tolist()).split(EOT)
    assert text == ["from clean", "清洗后的文本", "second file", "first file", "It is a truth universally acknowledged", ""]


def test_small_chunks_through_the_pool_keep_the_order(tok, corpus, tmp_path, monkeypatch):
    write_shards([corpus], tok, tmp_path / "one", processes=1, progress=False)
    monkeypatch.setattr(shards, "CHUNK_DOCS", 3)
    monkeypatch.setattr(shards, "CHUNKS_IN_FLIGHT", 1)
    write_shards([corpus], tok, tmp_path / "two", processes=2, progress=False)
    for name in ("train_0000.bin", "val_0000.bin", "meta.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
