"""Corpus cleaning for pretraining: normalise, filter low-quality text, drop exact and near duplicates.

    documents (streamed from files) -> normalise -> quality filters -> exact dedup -> near dedup
                                    -> cleaned.txt + report.json + report.md

Each quality filter is a small named function `(doc, config) -> reason | None` in `FILTERS`, so
the report names the rule that dropped each document, with examples. The filters follow the
heuristics of Gopher (Rae et al. 2021, appendix A) and C4 (Raffel et al. 2020, sec. 2.2), with
thresholds in `CleanConfig`, measured so the default corpora (English novels, Chinese news and
poems) keep almost everything. Documents are read one at a time and written as they are kept;
memory holds only 8-byte hashes per document (see minhash.py), never the corpus.

Knows nothing of tokens or models; `pocketgpt clean` (commands/clean.py) is the thin CLI over it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from pocketgpt.atomic import atomic_path, atomic_write
from pocketgpt.errors import DataError

if TYPE_CHECKING:
    import numpy as np


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class CleanConfig:
    """Thresholds of the cleaning rules (each becomes a `pocketgpt clean --flag`)."""

    min_chars: int = _opt(3, "too_short: drop documents with fewer non-space characters")
    max_bad_decode: int = _opt(0, "mis_decoded: most U+FFFD or mojibake sequences a document may hold")
    max_url_ratio: float = _opt(0.2, "url_spam: most share of characters inside URLs")
    max_symbol_ratio: float = _opt(0.1, "symbol_spam: most share of non-space characters that are symbols")
    min_letter_ratio: float = _opt(0.5, "not_text: least share of non-space characters that are letters")
    max_dup_line_ratio: float = _opt(0.4, "repeated_lines: most share of lines repeating an earlier line")
    max_dup_ngram_ratio: float = _opt(0.6, "repeated_ngrams: most share of n-grams occurring twice or more")
    ngram: int = _opt(5, "repeated_ngrams: n, in words (Latin) or characters (CJK)")
    near_threshold: float = _opt(0.8, "near_duplicate: Jaccard similarity of shingles counted as duplicate")
    shingle: int = _opt(5, "near_duplicate: characters per shingle")
    num_perm: int = _opt(128, "near_duplicate: MinHash permutations (signature length)")
    doc_per_line: bool = False  # documents are lines, not blank-line separated paragraphs
    errors: str = "strict"  # or "replace": undecodable bytes become U+FFFD (which mis_decoded drops)
    skip: tuple[str, ...] = ()  # rule names turned off
    examples: int = 3  # examples kept per rule in the report
    seed: int = 0


# --- normalisation ---------------------------------------------------------------------------

# NFKC maps full-width forms to ASCII (Ｈｅｌｌｏ１２３ -> Hello123: what a tokenizer should see), but
# it also turns Chinese punctuation ，！？：；（） into ASCII , ! ? : ; ( ) and …… into ......, which
# changes how Chinese is written. We keep those punctuation marks: NFKC runs only between them.
KEEP = (
    "".join(c for c in map(chr, range(0xFF01, 0xFF61)) if unicodedata.category(c).startswith("P"))
    + "\u2026\u2025"
)  # … ‥
_KEEP_SPLIT = re.compile(f"([{re.escape(KEEP)}]+)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")  # keeps \t and \n
_SPACES = re.compile(r"[ \t]+")


def normalize(text: str) -> str:
    """NFKC except Chinese punctuation; drop control and zero-width characters; collapse runs of
    spaces; strip each line and drop empty ones (a document never holds a blank line)."""
    if not text.isascii():
        parts = _KEEP_SPLIT.split(text)  # odd indices are the kept punctuation
        parts[::2] = [unicodedata.normalize("NFKC", p) for p in parts[::2]]
        text = "".join(parts)
    text = _CONTROL.sub("", text)
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def dedup_text(doc: str) -> str:
    """The form two documents must share to count as duplicates: full NFKC (punctuation too),
    case-folded, whitespace collapsed, so `Hello，World` and `hello, world` match."""
    return " ".join(unicodedata.normalize("NFKC", doc).casefold().split())


def exact_key(form: str) -> np.ndarray:
    """64-bit BLAKE2b of a document's dedup form, as a (1,) array for KeySet."""
    import numpy as np  # here, not at the top: `pocketgpt --help` imports this module for its flags

    digest = hashlib.blake2b(form.encode("utf-8"), digest_size=8).digest()
    return np.frombuffer(digest, dtype=np.uint64)  # (1,)


# --- quality filters: (doc, config) -> reason or None ----------------------------------------

# not _ or [] (Gutenberg's _italics_ and [notes]), nor ○, which Chinese uses as a zero (二○○○年)
_SYMBOL = regex.compile(r"(?!○)[\p{S}#*\\/@{}]")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.I)
_UNIT = regex.compile(r"\p{Han}|\p{Hiragana}|\p{Katakana}|\p{Hangul}+|[\p{L}\p{N}]+")
_BOILER = re.compile(
    r"all rights reserved|click here|cookie policy|privacy policy|terms of (?:use|service)|"
    r"enable javascript|subscribe to our|lorem ipsum|版权所有|点击这里|点击此处|免责声明|隐私政策|返回顶部|上一篇|下一篇",
)  # matched against the lower-cased text: re.I makes the search ~5x slower


def _mojibake_pattern() -> re.Pattern:
    """UTF-8 bytes read as Latin-1 / cp1252: a lead byte (Ã, â, ä, ...) then its continuation bytes
    (0x80-0xBF) as those code pages show them, e.g. "Ã©" for é and "ä¸­" for 中."""
    cont = {bytes([b]).decode("latin-1") for b in range(0x80, 0xC0)}
    cont |= {bytes([b]).decode("cp1252", errors="ignore") for b in range(0x80, 0xC0)} - {""}
    c = "[" + re.escape("".join(sorted(cont))) + "]"
    return re.compile(f"[\u00c2-\u00df]{c}|[\u00e0-\u00ef]{c}{{2}}|[\u00f0-\u00f4]{c}{{3}}")


_MOJIBAKE = _mojibake_pattern()


def _is_mojibake(s: str) -> bool:
    """Does `s` re-encode (cp1252, else Latin-1 per character) to valid UTF-8?"""
    raw = b"".join(ch.encode("cp1252") if ch.encode("cp1252", "ignore") else ch.encode("latin-1") for ch in s)
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _nonspace(text: str) -> int:
    return len("".join(text.split()))


def _letters(text: str) -> int:
    return sum(map(str.isalpha, text))  # str.isalpha is Unicode category L*: CJK ideographs count


def too_short(doc: str, cfg: CleanConfig) -> str | None:
    n = _nonspace(doc)
    least = max(1, cfg.min_chars)  # an empty document is never kept: it would read as a separator
    return f"{n} non-space characters < {least}" if n < least else None


def mis_decoded(doc: str, cfg: CleanConfig) -> str | None:
    bad = doc.count("\ufffd") + sum(1 for m in _MOJIBAKE.finditer(doc) if _is_mojibake(m.group()))
    return f"{bad} replacement characters or mojibake sequences" if bad > cfg.max_bad_decode else None


def url_spam(doc: str, cfg: CleanConfig) -> str | None:
    ratio = sum(len(m.group()) for m in _URL.finditer(doc)) / max(1, len(doc))
    return f"URL share {ratio:.2f} > {cfg.max_url_ratio}" if ratio > cfg.max_url_ratio else None


def symbol_spam(doc: str, cfg: CleanConfig) -> str | None:
    ratio = len(_SYMBOL.findall(doc)) / max(1, _nonspace(doc))
    return f"symbol share {ratio:.2f} > {cfg.max_symbol_ratio}" if ratio > cfg.max_symbol_ratio else None


def not_text(doc: str, cfg: CleanConfig) -> str | None:
    ratio = _letters(doc) / max(1, _nonspace(doc))
    return f"letter share {ratio:.2f} < {cfg.min_letter_ratio}" if ratio < cfg.min_letter_ratio else None


def repeated_lines(doc: str, cfg: CleanConfig) -> str | None:
    lines = doc.split("\n")
    if len(lines) < 3:  # with two lines, one repeat would already be 50%
        return None
    ratio = (len(lines) - len(set(lines))) / len(lines)
    return (
        f"repeated-line share {ratio:.2f} > {cfg.max_dup_line_ratio}"
        if ratio > cfg.max_dup_line_ratio
        else None
    )


def repeated_ngrams(doc: str, cfg: CleanConfig) -> str | None:
    """Share of word (or CJK character) n-grams that occur more than once (Gopher's duplicate n-gram
    fraction, counted in n-grams rather than characters)."""
    units = _UNIT.findall(doc.casefold())
    if len(units) < 4 * cfg.ngram:  # too few n-grams for a share to mean anything
        return None
    counts = Counter(zip(*(units[i:] for i in range(cfg.ngram)), strict=False))
    ratio = sum(c for c in counts.values() if c > 1) / sum(counts.values())
    return (
        f"repeated {cfg.ngram}-gram share {ratio:.2f} > {cfg.max_dup_ngram_ratio}"
        if ratio > cfg.max_dup_ngram_ratio
        else None
    )


def boilerplate(doc: str, cfg: CleanConfig) -> str | None:
    lines = doc.lower().split("\n")
    hits = sum(1 for line in lines if _BOILER.search(line))
    return f"{hits} of {len(lines)} lines are web boilerplate" if hits * 2 > len(lines) else None


Filter = Callable[[str, CleanConfig], "str | None"]
# cheapest and most certain first: the first rule that fires names the drop
FILTERS: dict[str, Filter] = {
    "too_short": too_short,
    "mis_decoded": mis_decoded,
    "not_text": not_text,
    "url_spam": url_spam,
    "symbol_spam": symbol_spam,
    "boilerplate": boilerplate,
    "repeated_lines": repeated_lines,
    "repeated_ngrams": repeated_ngrams,
}
RULES = [*FILTERS, "exact_duplicate", "near_duplicate"]


# --- reading documents -----------------------------------------------------------------------


def iter_documents(
    paths: Iterable[Path], doc_per_line: bool = False, errors: str = "strict"
) -> Iterator[tuple[str, str]]:
    """Yield (where, text) one document at a time: paragraphs separated by blank lines, or one per
    line. `where` is `file:line`. Bytes are decoded line by line, so a bad byte is reported with
    its file offset; a newline byte never occurs inside a UTF-8 sequence, so splitting is safe."""
    if errors not in ("strict", "replace"):
        raise DataError(f"unknown --errors mode {errors!r}; use strict or replace")
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
        offset, lines, start = 0, [], 0
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, path, offset, errors).rstrip("\r\n")
                line = line[1:] if offset == 0 and line.startswith("\ufeff") else line  # a BOM is not text
                offset += len(raw)
                if not line.strip():
                    if lines:
                        yield f"{path}:{start}", "\n".join(lines)
                    lines = []
                elif doc_per_line:
                    yield f"{path}:{lineno}", line
                else:
                    start = start if lines else lineno
                    lines.append(line)
        if lines:
            yield f"{path}:{start}", "\n".join(lines)


def _decode(raw: bytes, path: Path, offset: int, errors: str) -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {offset + e.start} (byte 0x{raw[e.start]:02x}); "
            "convert it to UTF-8 or pass --errors replace"
        ) from None


# --- the pipeline ----------------------------------------------------------------------------


class Cleaner:
    """Judges documents one at a time, remembering hashes of the kept ones for deduplication."""

    def __init__(self, cfg: CleanConfig) -> None:
        unknown = set(cfg.skip) - set(RULES)
        if unknown:
            raise DataError(
                f"unknown rule(s) {', '.join(sorted(unknown))} in skip; rules are {', '.join(RULES)}"
            )
        if not 0 < cfg.near_threshold <= 1:
            raise DataError(f"near_threshold must be in (0, 1], got {cfg.near_threshold}")
        if min(cfg.num_perm, cfg.shingle, cfg.ngram) < 1:
            raise DataError("num_perm, shingle and ngram must be at least 1")
        from pocketgpt.text.minhash import KeySet, LSHIndex, MinHasher, choose_bands

        self.cfg = cfg
        self.filters = [(n, f) for n, f in FILTERS.items() if n not in cfg.skip]
        self.exact = KeySet()
        self.hasher = MinHasher(cfg.num_perm, cfg.seed)
        self.bands, self.rows = choose_bands(cfg.near_threshold, cfg.num_perm)
        self.lsh = LSHIndex(self.bands, self.rows, cfg.seed + 1)

    def judge(self, doc: str) -> tuple[str, str] | None:
        """(rule, reason) if `doc` (already normalised) is dropped, else None (and it is remembered)."""
        for name, rule in self.filters:
            if (why := rule(doc, self.cfg)) is not None:
                return name, why
        form = dedup_text(doc)
        key = exact_key(form)
        if "exact_duplicate" not in self.cfg.skip and self.exact.contains_any(key):
            return "exact_duplicate", "same text (after normalising) as an earlier document"
        if "near_duplicate" not in self.cfg.skip:
            sig = self.hasher.text_signature(form, self.cfg.shingle)
            if self.lsh.seen_similar(sig):
                return (
                    "near_duplicate",
                    f"shares a MinHash band with an earlier document (Jaccard ~>= {self.cfg.near_threshold})",
                )
        self.exact.add(key)
        return None


def clean_corpus(
    inputs: list[Path], out_dir: Path, config: CleanConfig | None = None, progress: bool = True
) -> dict:
    """Clean `inputs` into `out_dir`/cleaned.txt (documents separated by blank lines) and write
    report.json + report.md. Returns the report; `docs_in == docs_kept + sum(dropped.values())`."""
    from tqdm import tqdm

    cfg = config or CleanConfig()
    cleaner, out_dir = Cleaner(cfg), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; give a directory for cleaned.txt and the reports")
    report = _new_report(inputs, out_dir, cfg, cleaner)
    t0 = time.perf_counter()
    with atomic_path(out_dir / "cleaned.txt") as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as out:
        bar = tqdm(desc="clean", unit="doc", disable=not progress, mininterval=0.5)
        for where, raw in iter_documents(inputs, cfg.doc_per_line, cfg.errors):
            doc = normalize(raw)
            verdict = cleaner.judge(doc)
            _tally(report, where, raw, doc, verdict, cfg.examples)
            if verdict is None:
                out.write(("\n\n" if report["docs_kept"] > 1 else "") + doc)
            bar.update(1)
        bar.close()
        if report["docs_in"] == 0:
            raise DataError(f"no documents in {', '.join(map(str, inputs))}; give files with some text")
        out.write("\n" if report["docs_kept"] else "")
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["docs_per_s"] = round(report["docs_in"] / max(report["seconds"], 1e-9), 1)
    atomic_write(out_dir / "report.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    atomic_write(out_dir / "report.md", report_markdown(report))
    return report


def _new_report(inputs: list[Path], out_dir: Path, cfg: CleanConfig, cleaner: Cleaner) -> dict:
    return {
        "inputs": [str(p) for p in inputs],
        "output": str(out_dir / "cleaned.txt"),
        "docs_in": 0,
        "docs_kept": 0,
        "chars_in": 0,
        "chars_kept": 0,
        "dropped": {r: 0 for r in RULES},
        "examples": {r: [] for r in RULES},
        "lsh": {"bands": cleaner.bands, "rows": cleaner.rows},
        "config": dataclasses.asdict(cfg),
    }


def _tally(
    report: dict, where: str, raw: str, doc: str, verdict: tuple[str, str] | None, examples: int
) -> None:
    report["docs_in"] += 1
    report["chars_in"] += len(raw)
    if verdict is None:
        report["docs_kept"] += 1
        report["chars_kept"] += len(doc)
        return
    rule, why = verdict
    report["dropped"][rule] += 1
    if len(report["examples"][rule]) < examples:
        text = raw if len(raw) <= 160 else raw[:160] + "…"
        report["examples"][rule].append({"where": where, "why": why, "text": text})


def report_markdown(report: dict) -> str:
    """The report as a markdown page: counts per rule, then examples of each."""
    n = max(1, report["docs_in"])
    lines = [
        "# Cleaning report",
        "",
        f"- inputs: {', '.join(report['inputs'])}",
        f"- documents in: {report['docs_in']}, kept: {report['docs_kept']} ({100 * report['docs_kept'] / n:.1f}%)",
        f"- characters in: {report['chars_in']}, kept: {report['chars_kept']}",
        f"- time: {report.get('seconds', 0)} s ({report.get('docs_per_s', 0)} documents/s)",
        f"- near-duplicate LSH: {report['lsh']['bands']} bands x {report['lsh']['rows']} rows",
        "",
        "| rule | dropped | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r} | {c} | {100 * c / n:.2f}% |" for r, c in report["dropped"].items()]
    for rule, shown in report["examples"].items():
        if shown:
            lines += ["", f"## {rule}", ""]
            lines += [
                f"- `{e['where']}` ({e['why']}): {json.dumps(e['text'], ensure_ascii=False)}" for e in shown
            ]
    return "\n".join(lines) + "\n"
