"""Read R's data files without R: the serialisation format and lazy-load databases.

R packages ship their data sets as a *lazy-load database*, two files side by side:

    Rdata.rdx   an `.rds` file (gzip or zlib): a serialised named list whose `variables`
                element maps each object name to c(offset, length) in the .rdb
    Rdata.rdb   the objects themselves, back to back; each blob is a 4-byte big-endian
                uncompressed length, then (usually) a zlib stream of one serialised object

A serialised object ("XDR" format, R Internals manual, section 1.8 "Serialization Formats") is
the header `X\\n`, three big-endian int32s (format version 2 or 3, writer R version, minimum
reader version), and for version 3 the native encoding as an int32 length plus bytes. Then one
*item* follows, recursively: an int32 of flags, then the payload for its type.

    flags: bits 0-7 the SEXP type, bit 8 "is an object", bit 9 "has attributes",
           bit 10 "has a tag", bits 12-27 "levels" (for a CHARSXP: its encoding)

We read only what data sets of text need: character vectors (STRSXP of CHARSXP, with NA),
generic vectors (VECSXP), logical/integer/double vectors, pairlists (LISTSXP, how attributes
like `names` are stored), symbols and back-references to symbols. Anything else (closures,
environments, bytecode) raises ValueError: this is a reader for data, not an R interpreter.

Knows nothing of corpora; corpora.py uses it for Jane Austen's novels.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP type codes (R's Rinternals.h) and the pseudo-types used only in serialisation.
SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
NA_INT = -(2**31)  # R's NA_integer_ (and NA for logicals) is INT_MIN
UTF8_MASK, LATIN1_MASK = 1 << 3, 1 << 2  # CHARSXP levels bits that name the encoding


@dataclass
class RObject:
    """A vector read from R: its values plus its attributes (e.g. `names`) as a dict."""

    value: list[Any]
    attributes: dict[str, Any] = field(default_factory=dict)

    def named(self) -> dict[str, Any]:
        """The vector as a dict keyed by its `names` attribute (R's `x[["name"]]`)."""
        names = self.attributes.get("names")
        if names is None:
            raise ValueError("this R vector has no names attribute")
        return dict(zip(names.value, self.value, strict=True))


class _Reader:
    """A cursor over one serialised stream; `item()` reads one (recursive) item."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0
        self.refs: list[Any] = []  # symbols/environments, in order, for REFSXP back-references

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated R data: wanted {n} bytes at offset {self.pos}")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def length(self) -> int:
        n = self.int()
        if n == -1:  # "long vector": the length follows as two int32s (upper, lower)
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE_SXP:
            return None
        if kind == REFSXP:  # index into the table of already-read symbols, 1-based
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if kind == SYMSXP:
            name = self.item()  # a CHARSXP
            self.refs.append(name)
            return name
        if kind == LISTSXP:
            return self.pairlist(has_attr, has_tag)
        if kind == CHARSXP:
            return self.charsxp(flags >> 12)
        value = self.vector(kind)
        attrs = self.item() if has_attr else {}
        return RObject(value, attrs or {})

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict[str, Any]:
        """A pairlist as a dict tag -> value (R stores each cell as attr?, tag?, CAR, CDR)."""
        out: dict[str, Any] = {}
        while True:
            if has_attr:
                self.item()  # attributes of a pairlist cell: never needed for data
            tag = self.item() if has_tag else str(len(out))
            out[tag] = self.item()
            flags = self.int()  # the CDR: another LISTSXP cell, or NULL to end
            if flags & 0xFF == NILVALUE_SXP:
                return out
            if flags & 0xFF != LISTSXP:
                raise ValueError(f"unsupported pairlist tail of type {flags & 0xFF}")
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))

    def charsxp(self, levels: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        # R marks UTF-8 and Latin-1 strings; unmarked ones are ASCII or the writer's native
        # encoding, which for CRAN data built on Linux is UTF-8.
        return raw.decode("latin-1" if levels & LATIN1_MASK else "utf-8", errors="replace")

    def vector(self, kind: int) -> list[Any]:
        n = self.length()
        if kind == STRSXP:
            return [self.item() for _ in range(n)]
        if kind == VECSXP:
            return [self.item() for _ in range(n)]
        if kind in (LGLSXP, INTSXP):
            vals = struct.unpack_from(f">{n}i", self.take(4 * n))
            return [None if v == NA_INT else (bool(v) if kind == LGLSXP else v) for v in vals]
        if kind == REALSXP:
            return list(struct.unpack_from(f">{n}d", self.take(8 * n)))
        raise ValueError(f"unsupported R object type {kind} (this reader handles data vectors only)")


def unserialize(data: bytes) -> Any:
    """One R object from its XDR serialisation (what `serialize(x, NULL)` writes)."""
    if data[:2] != b"X\n":
        raise ValueError(
            f"not XDR-serialised R data (header {data[:2]!r}; ascii/native formats are not supported)"
        )
    r = _Reader(data)
    r.pos = 2
    version = r.int()
    r.int(), r.int()  # writer's R version, minimum reader version: informational
    if version == 3:
        r.take(r.int())  # the writer's native encoding name, e.g. b"UTF-8"
    elif version != 2:
        raise ValueError(f"unsupported R serialisation format version {version}")
    return r.item()


def read_rds(path: str | os.PathLike) -> Any:
    """An .rds file (what saveRDS writes): gzip-compressed by default, sometimes zlib or raw."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:1] == b"\x78":
        raw = zlib.decompress(raw)
    return unserialize(raw)


def _inflate(blob: bytes) -> bytes:
    """One lazy-load blob: 4-byte length, then zlib; or (R's compress=2/3) a type byte first."""
    (n,) = struct.unpack_from(">I", blob, 0)
    body = blob[4:]
    if body[:1] != b"\x78":  # not a zlib header, so R's type byte: Z(lib), 2 (bzip2), X(z), 0 (none)
        kind, body = body[:1], body[1:]
        body = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[kind](body)
    else:
        body = zlib.decompress(body)
    if len(body) != n:
        raise ValueError(f"R lazy-load blob inflated to {len(body)} bytes, header says {n}")
    return body


def read_lazyload(rdb: str | os.PathLike) -> dict[str, Any]:
    """Every object of a lazy-load database `X.rdb` (with its index `X.rdx` beside it)."""
    rdb = Path(rdb)
    index = read_rds(rdb.with_suffix(".rdx")).named()
    data = rdb.read_bytes()
    out = {}
    for name, where in index["variables"].named().items():
        offset, length = (int(v) for v in where.value)
        out[name] = unserialize(_inflate(data[offset : offset + length]))
    return out
