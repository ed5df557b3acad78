"""Token shards: a corpus tokenized once into flat uint16/uint32 files that training memory-maps.

    sources (text files, `pocketgpt clean` dirs, corpus names)
      -> documents (paragraphs separated by blank lines)  -> train or val, by a hash of the text
      -> token ids, each document followed by <|endoftext|>  -> train_0000.bin, ..., val_0000.bin
      -> meta.json (dtype, vocab size, token and text-byte counts, sha256 of every shard) + the tokenizer

The split depends only on each document's text, so re-running gives the same split, and adding
documents never moves an old one. Documents stream through a pool of processes in chunks, order
preserved, so memory holds a few thousand documents (never the corpus) and the files are
byte-identical whatever the number of processes. Everything is written into a staging directory
inside `out_dir` and moved into place only when the whole corpus is done, meta.json last: a bad
input (empty, binary, not UTF-8) found half-way leaves the previous shards untouched, and a
shards directory with a meta.json is complete. Knows nothing of batches (batches.py) or models.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np

from pocketgpt.atomic import sha256_file
from pocketgpt.errors import DataError, TokenizerError

FORMAT = 1
META = "meta.json"
SPLITS = ("train", "val")
CHUNK_DOCS = 512  # documents per task of the process pool
CHUNKS_IN_FLIGHT = 4  # chunks per process held in memory at once


def write_shards(sources: list[str | os.PathLike], tokenizer, out_dir: str | os.PathLike, *,
                 val_fraction: float = 0.005, dtype: str = "auto", shard_tokens: int = 2**24,
                 processes: int | None = None, progress: bool = True) -> dict:
    """Tokenize `sources` into shards in `out_dir`; returns the metadata written to meta.json."""
    from pocketgpt.text.specials import EOT

    if EOT not in tokenizer.special_tokens:
        raise TokenizerError(f"the tokenizer has no {EOT} token to end documents with; train it with "
                             f"`--special {EOT}` (pocketgpt's default) or add it")
    np_dtype = _dtype(dtype, tokenizer.vocab_size)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be at least 1, got {shard_tokens}")
    files = source_files(sources)  # missing paths fail here, before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".tokenize-", dir=out))
    try:
        tokenizer.save(stage)
        writers = {s: _ShardWriter(stage, s, np_dtype, shard_tokens) for s in SPLITS}
        docs = _encode_all(_documents(files), files, tokenizer, stage, processes, progress)
        _split_into(writers, docs, tokenizer.special_tokens[EOT], val_fraction, sources)
        meta = {"format": FORMAT, "dtype": np.dtype(np_dtype).name, "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.special_tokens[EOT], "tokenizer_sha256": _tokenizer_digest(stage),
                "sources": [str(s) for s in sources], "val_fraction": val_fraction,
                "splits": {s: w.close() for s, w in writers.items()}}
        (stage / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def _split_into(writers: dict, docs: Iterable[tuple[str, np.ndarray, int]], eot: int, val_fraction: float,
                sources: list) -> None:
    """Route each document to train or val by its hash. A split always has both halves: the first
    document waits for a second (alone, it is cut: val gets the tail of its tokens), and the latest
    train document is held back so it can become val when no document hashed into val."""
    first, held, n_docs, any_val = None, None, 0, False
    for doc in docs:
        n_docs += 1
        if n_docs == 1:
            first = doc
            continue
        for d in [first, doc] if n_docs == 2 else [doc]:
            if _is_val(d[0], val_fraction):
                writers["val"].add(d, eot)
                any_val = True
            else:
                if held is not None:
                    writers["train"].add(held, eot)
                held = d
    if n_docs == 0:
        raise DataError(f"no text in {', '.join(map(str, sources))}: the corpus is empty; give files with text")
    if n_docs == 1:
        text, ids, n_bytes = first
        cut = len(ids) - max(1, int(len(ids) * val_fraction)) if val_fraction > 0 and len(ids) > 1 else len(ids)
        head_bytes = round(n_bytes * cut / len(ids))  # bytes shared in proportion to tokens (a guess at the cut)
        writers["train"].add((text, ids[:cut], head_bytes), eot if cut == len(ids) else None)
        if cut < len(ids):
            writers["val"].add((text, ids[cut:], n_bytes - head_bytes), eot)
    elif held is not None:
        writers["val" if val_fraction > 0 and not any_val else "train"].add(held, eot)


def _dtype(spec: str, vocab_size: int):
    if spec == "auto":
        return np.uint16 if vocab_size <= 2**16 else np.uint32
    if spec not in ("uint16", "uint32"):
        raise DataError(f"--dtype {spec}: expected auto, uint16 or uint32")
    if spec == "uint16" and vocab_size > 2**16:
        raise DataError(f"the vocabulary has {vocab_size} tokens but uint16 holds ids up to 65535; "
                        "use --dtype uint32 (or auto)")
    return np.uint16 if spec == "uint16" else np.uint32


def _is_val(doc: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def source_files(sources: list[str | os.PathLike]) -> list[Path]:
    """The text files behind `sources`: corpus names, `pocketgpt clean` dirs, directories, files."""
    from pocketgpt.text.corpora import ALIASES, CORPORA, corpus_paths

    files: list[Path] = []
    for src in sources:
        s, path = str(src), Path(src)
        if s in CORPORA or s in ALIASES:
            files += corpus_paths(s)
        elif (path / "cleaned.txt").is_file():
            files.append(path / "cleaned.txt")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise DataError(f"{path}: no .txt files (nor a cleaned.txt) to tokenize")
            files += found
        elif not path.is_file():
            raise DataError(f"{path}: no such file, and not a corpus name ({', '.join([*ALIASES, *CORPORA])})")
        else:
            files.append(path)
    return files


def _documents(files: list[Path]) -> Iterator[str]:
    from pocketgpt.text.clean import iter_documents

    for where, doc in iter_documents(files):
        if "\x00" in doc:
            raise DataError(f"{where}: contains NUL bytes, so it looks like a binary file, not text")
        yield doc


def _encode_all(docs: Iterator[str], files: list[Path], tokenizer, stage: Path, processes: int | None,
                progress: bool) -> Iterator[tuple[str, np.ndarray, int]]:
    """(document, token ids, UTF-8 bytes) in order, encoded by a pool of processes; at most
    CHUNKS_IN_FLIGHT chunks per process are read ahead."""
    from tqdm import tqdm

    n = processes if processes is not None else min(2, os.cpu_count() or 1)
    total = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenize", disable=not progress)
    chunks = iter(lambda: list(islice(docs, CHUNK_DOCS)), [])
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER, pool = tokenizer, None
    if n > 1:
        import multiprocessing as mp

        # fork: the workers inherit the tokenizer and run only it (tiktoken + numpy), never torch, so
        # forking is safe and needs no importable __main__. spawn (no fork on this OS) loads it from disk.
        if "fork" in mp.get_all_start_methods():
            pool = mp.get_context("fork").Pool(n)
        else:
            pool = mp.get_context("spawn").Pool(n, initializer=_init_worker, initargs=(str(stage),))
    try:
        while group := list(islice(chunks, CHUNKS_IN_FLIGHT * n)):
            encoded = pool.map(_encode_chunk, group) if pool is not None else map(_encode_chunk, group)
            for chunk, (flat, ends) in zip(group, encoded, strict=True):
                ids = np.split(flat.astype(np.int64), ends[:-1])
                n_bytes = [len(d.encode("utf-8")) for d in chunk]
                bar.update(sum(n_bytes) + 2 * len(chunk))  # + the blank line after each
                yield from zip(chunk, ids, n_bytes, strict=True)
        bar.update(max(0, total - bar.n))
    finally:
        bar.close()
        _WORKER_TOKENIZER = None
        if pool is not None:
            pool.terminate()
            pool.join()


_WORKER_TOKENIZER = None


def _init_worker(directory: str) -> None:
    global _WORKER_TOKENIZER
    from pocketgpt.text.bpe import Tokenizer

    _WORKER_TOKENIZER = Tokenizer.load(directory)


def _encode_chunk(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The chunk's ids end to end (uint32: half the bytes back through the pipe) and where each
    document ends."""
    # special-token text inside a document is plain text: only we put <|endoftext|> between documents.
    # One encode per document: the processes are the parallelism (tiktoken's encode_batch adds a
    # thread per document, which costs more than it gains on short documents: 2.7 s vs 3.6 s here)
    ids = [_WORKER_TOKENIZER.encode(d, allowed_special="none") for d in docs]
    flat = np.frombuffer(array.array("I", chain.from_iterable(ids)), dtype=np.uint32)
    return flat, np.cumsum([len(doc) for doc in ids])


class _ShardWriter:
    """Appends token ids of one split, cutting a new file every `shard_tokens` tokens."""

    def __init__(self, out: Path, split: str, dtype, shard_tokens: int) -> None:
        self.out, self.split, self.dtype, self.limit = out, split, dtype, shard_tokens
        self.buf: list[np.ndarray] = []
        self.buffered = 0
        self.files: list[dict] = []
        self.n_docs = 0
        self.text_bytes = 0

    def add(self, doc: tuple[str, np.ndarray, int], eot: int | None) -> None:
        """Append a (text, ids, UTF-8 bytes) document's ids and the end-of-text token (None: the
        head of a document cut in two)."""
        _, ids, n_bytes = doc
        self.buf += [ids] if eot is None else [ids, np.array([eot], dtype=np.int64)]
        self.buffered += len(ids) + (eot is not None)
        self.n_docs += 1
        self.text_bytes += n_bytes
        if self.buffered >= self.limit:
            flat = np.concatenate(self.buf)
            cut = len(flat) - len(flat) % self.limit
            for i in range(0, cut, self.limit):
                self._flush(flat[i:i + self.limit])
            self.buf, self.buffered = [flat[cut:]], len(flat) - cut

    def _flush(self, ids: np.ndarray) -> None:
        name = f"{self.split}_{len(self.files):04d}.bin"
        with open(self.out / name, "wb") as f:
            ids.astype(self.dtype).tofile(f)
            f.flush()
            os.fsync(f.fileno())
        self.files.append({"file": name, "n_tokens": int(len(ids)), "sha256": sha256_file(self.out / name)})

    def close(self) -> dict:
        if self.buffered or not self.files:
            self._flush(np.concatenate(self.buf) if self.buf else np.zeros(0, np.int64))
        return {"n_tokens": sum(f["n_tokens"] for f in self.files), "n_docs": self.n_docs,
                "text_bytes": self.text_bytes, "shards": self.files}


def _publish(stage: Path, out: Path) -> None:
    """Move the finished files from `stage` into `out`: the old meta.json goes first (so a crash in
    between leaves an incomplete directory, never a wrong one), the old shards next, meta.json last."""
    (out / META).unlink(missing_ok=True)
    for split in SPLITS:
        for old in out.glob(f"{split}_*.bin"):
            old.unlink()
    for f in sorted(stage.iterdir()):
        if f.name != META:
            os.replace(f, out / f.name)
    os.replace(stage / META, out / META)


def _tokenizer_digest(out: Path) -> str:
    from pocketgpt.text.bpe_files import OURS

    return sha256_file(out / OURS)


# --- reading ---------------------------------------------------------------------------------


def read_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise DataError(f"{directory}: no {META}, so not a (complete) shards directory; write one with "
                        "`pocketgpt tokenize --out DIR`")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format", 0) > FORMAT:
        raise DataError(f"{path}: shards format {meta['format']} is newer than this pocketgpt; upgrade it")
    return meta


class TokenStream:
    """One split's shards end to end, memory-mapped read-only: a long 1-D array of token ids."""

    def __init__(self, directory: str | os.PathLike, split: str = "train") -> None:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        d = Path(directory)
        meta = read_meta(d)
        self.directory, self.split = d, split
        self.dtype, self.vocab_size, self.eot_id = np.dtype(meta["dtype"]), meta["vocab_size"], meta["eot_id"]
        self.parts = []
        for f in meta["splits"][split]["shards"]:
            path = d / f["file"]
            if not path.is_file() or path.stat().st_size != f["n_tokens"] * self.dtype.itemsize:
                raise DataError(f"{path}: missing or of the wrong size for {f['n_tokens']} tokens; "
                                "the shards directory is damaged: tokenize again")
            if f["n_tokens"]:
                self.parts.append(np.memmap(path, dtype=self.dtype, mode="r"))
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.n_tokens = int(self.starts[-1])
        self.text_bytes = int(meta["splits"][split].get("text_bytes", 0))  # for bits per byte

    def __len__(self) -> int:
        return self.n_tokens

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries if need be."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside the {self.n_tokens} tokens of {self.split}")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            offset = start + filled - int(self.starts[i])
            take = min(length - filled, len(self.parts[i]) - offset)
            out[filled:filled + take] = self.parts[i][offset:offset + take]
            filled, i = filled + take, i + 1
        return out


def open_shards(directory: str | os.PathLike, split: str = "train") -> TokenStream:
    return TokenStream(directory, split)


def verify_shards(directory: str | os.PathLike) -> None:
    """Check every shard's sha256 against meta.json; DataError names the first damaged file."""
    d = Path(directory)
    meta = read_meta(d)
    for split in SPLITS:
        for f in meta["splits"][split]["shards"]:
            if not (d / f["file"]).is_file() or sha256_file(d / f["file"]) != f["sha256"]:
                raise DataError(f"{d / f['file']}: checksum mismatch (the file was changed or damaged); tokenize again")


def load_tokenizer_of(directory: str | os.PathLike):
    from pocketgpt.text.bpe import Tokenizer

    return Tokenizer.load(directory)
