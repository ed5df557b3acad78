"""Corpus cleaning: normalisation, each filter on crafted bad text, dedup, the report, streaming."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pytest

from pocketgpt.errors import DataError
from pocketgpt.text.clean import FILTERS, RULES, CleanConfig, clean_corpus, normalize

GOOD_EN = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood (in 1811), this truth is so well fixed in the minds of "
    "the surrounding families that he is considered the rightful property of some one or other "
    "of their daughters, who met him at the café."
)
GOOD_ZH = (
    "新华社北京1月1日电，国家主席江泽民发表了1998年新年讲话《迈向充满希望的新世纪》。"
    "他说：“在新的一年里，我们要继续坚持改革开放，推动经济发展和社会全面进步！”"
    "各地群众纷纷表示，要为实现“九五”计划的目标而努力奋斗。"
)
BAD = {
    "too_short": "Hi",
    "mis_decoded": "The cafÃ© was closed, and the naÃ¯ve owner had gone home for the day.",
    "not_text": "1998 2001 2003 42.5 17.3 88.1 90.2 11.0 2.5 (3) 77%",
    "url_spam": "Visit http://cheap.example.com/buy?id=1 http://pills.example.net/now www.x.example",
    "symbol_spam": "BEST DEALS EVER ★★ CLICK NOW $$ FREE GIFTS >> WIN BIG",
    "boilerplate": "Home | About us\nCopyright 2024. All Rights Reserved.\nPrivacy Policy | Terms of Use",
    "repeated_lines": "Buy now!\nBuy now!\nBuy now!\nLimited offer today.",
    "repeated_ngrams": "buy cheap pills online today " * 8,
}


def test_every_filter_has_a_crafted_bad_doc():
    assert set(BAD) == set(FILTERS)


@pytest.mark.parametrize("rule", sorted(FILTERS))
def test_filter_fires_on_bad_and_not_on_good(rule):
    cfg, check = CleanConfig(), FILTERS[rule]
    assert check(normalize(BAD[rule]), cfg) is not None
    assert check(normalize(GOOD_EN), cfg) is None
    assert check(normalize(GOOD_ZH), cfg) is None


@pytest.mark.parametrize(
    "text", ["中文 is ä¸­æ–‡ when UTF-8 is read as Latin-1", "a broken byte \ufffd in the middle of this text"]
)
def test_mis_decoded_catches_chinese_mojibake_and_replacement_chars(text):
    assert FILTERS["mis_decoded"](text, CleanConfig()) is not None


def test_normalize_folds_full_width_but_keeps_chinese_punctuation():
    assert normalize("Ｈｅｌｌｏ１２３") == "Hello123"
    assert normalize("你好，世界！真的？（是）……") == "你好，世界！真的？（是）……"
    assert normalize("a\u200bb\x07c   d\t\te \n\n  f  ") == "abc d e\nf"


def write(path: Path, docs: list[str], sep: str = "\n\n") -> Path:
    path.write_text(sep.join(docs) + "\n", encoding="utf-8")
    return path


def run(tmp_path: Path, docs: list[str], **cfg) -> tuple[dict, list[str]]:
    src = write(tmp_path / "in.txt", docs)
    report = clean_corpus([src], tmp_path / "out", CleanConfig(**cfg), progress=False)
    kept = (tmp_path / "out" / "cleaned.txt").read_text(encoding="utf-8")
    assert kept.endswith("\n") and not kept.endswith("\n\n")
    return report, kept[:-1].split("\n\n")


def test_exact_duplicates_removed_after_normalisation(tmp_path):
    docs = [
        GOOD_EN,
        GOOD_ZH,
        GOOD_EN,
        "ＩＴ ＩＳ ＡＮＯＴＨＥＲ ＤＯＣＵＭＥＮＴ， ｓｈｏｒｔ",
        "it is another document, short",
    ]
    report, kept = run(tmp_path, docs)
    assert report["dropped"]["exact_duplicate"] == 2
    assert kept == [GOOD_EN, GOOD_ZH, "IT IS ANOTHER DOCUMENT， short"]


def test_near_duplicates_removed_different_docs_kept(tmp_path):
    other = (
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
        "seemed to unite some of the best blessings of existence; and had lived nearly twenty-one "
        "years in the world with very little to distress or vex her."
    )
    docs = [GOOD_EN, GOOD_ZH, other, GOOD_EN.replace("daughters", "sisters"), GOOD_ZH.replace("群众", "人民")]
    report, kept = run(tmp_path, docs)
    assert report["dropped"]["near_duplicate"] == 2
    assert kept == [GOOD_EN, GOOD_ZH, other]
    report, kept = run(tmp_path, docs, skip=("near_duplicate",))
    assert len(kept) == 5


def test_report_counts_add_up_and_name_examples(tmp_path):
    docs = [GOOD_EN, GOOD_ZH, GOOD_EN, *BAD.values()]
    report, kept = run(tmp_path, docs)
    assert report["docs_in"] == len(docs) == report["docs_kept"] + sum(report["dropped"].values())
    assert report["docs_kept"] == len(kept) == 2
    assert set(report["dropped"]) == set(RULES)
    for rule in BAD:
        assert report["dropped"][rule] == 1, rule
        example = report["examples"][rule][0]
        assert example["where"].startswith(str(tmp_path / "in.txt") + ":")
        assert example["text"][:20] == BAD[rule][:20], rule
    saved = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert saved["dropped"] == report["dropped"]
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| url_spam | 1 |" in md and "## exact_duplicate" in md


def test_doc_per_line_and_non_utf8(tmp_path):
    src = tmp_path / "lines.txt"
    src.write_bytes(GOOD_EN.encode() + b"\n" + GOOD_ZH.encode() + b"\nbad \xff byte in this line of text\n")
    with pytest.raises(
        DataError, match=rf"byte offset {len(GOOD_EN.encode()) + len(GOOD_ZH.encode()) + 6} \(byte 0xff\)"
    ):
        clean_corpus([src], tmp_path / "out", CleanConfig(doc_per_line=True), progress=False)
    assert not (tmp_path / "out" / "cleaned.txt").exists()  # nothing half-written
    report = clean_corpus(
        [src], tmp_path / "out", CleanConfig(doc_per_line=True, errors="replace"), progress=False
    )
    assert (report["docs_in"], report["docs_kept"], report["dropped"]["mis_decoded"]) == (3, 2, 1)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (CleanConfig(skip=("nope",)), "unknown rule"),
        (CleanConfig(near_threshold=1.5), "near_threshold"),
        (CleanConfig(num_perm=0), "at least 1"),
        (CleanConfig(errors="ignore"), "errors mode"),
    ],
)
def test_bad_settings_are_data_errors(tmp_path, cfg, match):
    with pytest.raises(DataError, match=match):
        clean_corpus([write(tmp_path / "in.txt", [GOOD_EN])], tmp_path / "out", cfg, progress=False)


def test_blank_input_and_file_as_out_dir_are_data_errors(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        clean_corpus([blank], tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="is a file"):
        clean_corpus([write(tmp_path / "in.txt", [GOOD_EN])], blank, progress=False)


def generate(path: Path, n_docs: int, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(20000)]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            f.write(" ".join(rng.choices(vocab, k=words)) + ".\n")


@pytest.mark.slow
def test_streaming_memory_stays_well_below_input(tmp_path):
    """50k documents: traced memory holds the hashes of kept documents, never the corpus."""
    src = tmp_path / "big.txt"
    generate(src, 50_000, 50)
    size = src.stat().st_size  # ~16 MB
    cfg = CleanConfig(doc_per_line=True, num_perm=32)
    clean_corpus(
        [write(tmp_path / "warm.txt", [GOOD_EN])], tmp_path / "warm", cfg, progress=False
    )  # lazy imports
    tracemalloc.start()
    try:
        report = clean_corpus([src], tmp_path / "out", cfg, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report["docs_in"] == 50_000 and report["docs_kept"] > 49_900
    assert peak < size / 3, (peak, size)  # ~48 bytes of hashes per document, x2 while merging
    assert (tmp_path / "out" / "cleaned.txt").stat().st_size > 0.95 * size


def test_cli_json_on_tiny_file(tmp_path, cli):
    src = write(tmp_path / "tiny.txt", [GOOD_EN, GOOD_ZH, GOOD_EN, BAD["url_spam"]])
    proc = cli("clean", str(src), "--out", str(tmp_path / "out"), "--json", "--near-threshold", "0.7")
    report = json.loads(proc.stdout)
    assert (report["docs_in"], report["docs_kept"]) == (4, 2)
    assert report["dropped"]["exact_duplicate"] == report["dropped"]["url_spam"] == 1
    assert report["config"]["near_threshold"] == 0.7
    bad = cli("clean", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"), check=False)
    assert bad.returncode == 2 and "no such file" in bad.stderr


@pytest.mark.slow
def test_clean_default_corpora_keeps_most(tmp_path, corpora):
    from pocketgpt.text.corpora import corpus_paths

    report = clean_corpus(corpus_paths("default"), tmp_path / "out", progress=False)
    assert report["docs_in"] > 30_000
    assert report["docs_kept"] > 0.9 * report["docs_in"]
    assert report["docs_in"] == report["docs_kept"] + sum(report["dropped"].values())
    assert report["dropped"]["exact_duplicate"] > 0  # chapter headings and repeated dialogue lines
