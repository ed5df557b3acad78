"""The n-gram baseline: probabilities checked against counts and add-k worked out by hand,
rows that sum to 1, seeded sampling, perplexity against a direct computation, and the CLI."""

from __future__ import annotations

import json
import math
import random
import time

import pytest

from pocketgpt.text.ngram import BOS, EOS, UNK, NGramModel, join_units, split_units

FRUIT = "I love oranges\nI love grapes\nyou love oranges"


def fruit(n: int = 2, add_k: float = 0.0) -> NGramModel:
    return NGramModel(n, add_k).fit(split_units(FRUIT, "word"))


# --- counting ------------------------------------------------------------------------------


def test_worked_example_probabilities():
    m = fruit()
    assert m.prob(["I"], "love") == 1
    assert m.prob(["love"], "oranges") == pytest.approx(2 / 3)
    assert m.prob(["love"], "grapes") == pytest.approx(1 / 3)
    assert m.prob([BOS], "I") == pytest.approx(2 / 3)  # 2 of 3 sentences start with "I"
    assert m.prob(["oranges"], EOS) == 1
    assert m.prob(["love"], "you") == 0  # never seen: no smoothing, no mass
    probs = m.to_json()["probs"]
    assert probs["love"] == pytest.approx({"oranges": 2 / 3, "grapes": 1 / 3})
    assert probs["I"] == {"love": 1.0}


def test_trigram_contexts_and_sentence_padding():
    m = fruit(3)
    assert m.prob([BOS, BOS], "you") == pytest.approx(1 / 3)
    assert m.prob(["I", "love"], "grapes") == pytest.approx(1 / 2)
    assert m.prob(["you", "love"], "oranges") == 1
    # no n-gram crosses a line end: "oranges </s> I" is not a context
    assert all(EOS not in ctx for ctx in m.counts)
    assert "I love" in m.to_json()["probs"]


def test_add_k_by_hand():
    m = fruit(2, add_k=1)
    # V = {I, love, oranges, grapes, you, </s>, <unk>} = 7; every cell is (c + 1) / (c(h) + 7)
    assert m.V == 7 and UNK in m.vocab
    assert m.prob(["I"], "love") == pytest.approx((2 + 1) / (2 + 7))
    assert m.prob(["love"], "grapes") == pytest.approx((1 + 1) / (3 + 7))
    assert m.prob(["I"], "you") == pytest.approx((0 + 1) / (2 + 7))  # "every word may follow any word"
    assert m.prob(["you"], "pears") == pytest.approx(1 / (1 + 7))  # unseen word -> <unk>
    assert m.prob(["pears"], "love") == pytest.approx(1 / 7)  # unseen context: uniform
    j = m.to_json()
    assert j["unseen"]["love"] == pytest.approx(1 / 10) and j["unseen_context_prob"] == pytest.approx(1 / 7)


@pytest.mark.parametrize("add_k", [0.0, 0.5])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_rows_sum_to_one(n, add_k):
    m = NGramModel(n, add_k).fit(split_units("abracadabra\ncadabra bra\n阿布拉卡达布拉", "char"))
    for ctx in m.counts:
        assert sum(m.distribution(ctx).values()) == pytest.approx(1.0)
    if add_k:
        assert sum(m.distribution(["z"] * (n - 1)).values()) == pytest.approx(1.0)


def test_lower_order_tables_match_direct_counting():
    """Back-off tables are derived from the trigram counts; they must equal a bigram fit."""
    units = split_units("the cat sat on the mat\nthe dog sat\non the cat", "word")
    tri, bi, uni = NGramModel(3).fit(units), NGramModel(2).fit(units), NGramModel(1).fit(units)
    got = {ctx[-1:]: row for ctx, row in tri._table(2).items()}
    assert {k: dict(v) for k, v in got.items()} == {k: dict(v) for k, v in bi.counts.items()}
    assert dict(tri._table(1)[()]) == dict(uni.counts[()])


def test_stats_count_cells_and_dense_growth():
    s = fruit(2).stats()
    assert (s["vocab_size"], s["contexts"], s["cells"], s["dense_cells"]) == (6, 6, 8, 36)


# --- units ---------------------------------------------------------------------------------


def test_chinese_characters():
    m = NGramModel(2).fit(split_units("我爱你\n我爱北京", "char"))
    assert m.prob(["我"], "爱") == 1
    assert m.prob(["爱"], "你") == pytest.approx(0.5)
    assert m.to_json()["probs"]["爱"] == pytest.approx({"你": 0.5, "北": 0.5})
    assert NGramModel(3).fit(split_units("我爱你", "char")).to_json()["probs"]["我 爱"] == {"你": 1.0}
    text = join_units(m.generate(30, random.Random(0)), "char")
    assert set(text) <= set("我爱你北京\n")


def test_word_split_and_join():
    assert split_units("Elizabeth's dog, I think--yes!", "word") == [
        "Elizabeth's", "dog", ",", "I", "think", "-", "-", "yes", "!", EOS,
    ]  # fmt: skip
    assert split_units("我爱北京。Hi", "word") == ["我", "爱", "北", "京", "。", "Hi", EOS]
    for text in ['"Well," said she, "it\'s 3.5 (or so)."', "我爱北京天安门。", "我用Python写代码。"]:
        assert join_units(split_units(text, "word"), "word") == text + "\n"  # EOS -> newline


def test_split_marks_lines_and_prompt_end():
    assert split_units("ab\n\nc\n", "char") == ["a", "b", EOS, "c", EOS]
    assert split_units("ab\nc", "char", end=False) == ["a", "b", EOS, "c"]
    assert split_units("ab\n", "char", end=False) == ["a", "b", EOS]  # a finished line stays finished
    assert join_units(["a", "b", EOS, "c"], "char") == "ab\nc"


def test_bpe_token_units():
    from pocketgpt.text.bpe import load_tokenizer

    tok = load_tokenizer("gpt2")
    units = split_units("hello world\nhello there\n你好", "token", tok)
    hello, world, there = tok.encode("hello"), tok.encode(" world"), tok.encode(" there")
    assert units == hello + world + [EOS] + hello + there + [EOS] + tok.encode("你好") + [EOS]
    m = NGramModel(2).fit(units)
    assert m.prob(hello[-1:], world[0]) == pytest.approx(0.5)
    assert " ".join(map(str, hello)) in m.to_json()["probs"]
    assert join_units(units, "token", tok) == "hello world\nhello there\n你好\n"


# --- generation ----------------------------------------------------------------------------


def test_generation_is_seeded():
    m = NGramModel(2).fit(split_units("abcabdabeacbadcbe\nbcaedcba", "char"))
    a, b = m.generate(50, random.Random(1)), m.generate(50, random.Random(1))
    assert a == b and len(a) == 50
    assert m.generate(50, random.Random(2)) != a


def test_generation_backs_off_at_unseen_context():
    m = fruit(3)
    out = m.generate(20, random.Random(0), split_units("we hate", "word", end=False))
    assert len(out) == 20 and set(out) <= set(m.vocab)
    # "I love" was seen: the next word must be one that followed it
    assert m.generate(1, random.Random(3), ["I", "love"])[0] in {"oranges", "grapes"}


def test_smoothed_generation_can_leave_the_corpus_but_never_writes_unk():
    m = fruit(2, add_k=5)
    out = m.generate(300, random.Random(0))
    assert UNK not in out
    assert ("love", "love") in set(zip(out, out[1:], strict=False))  # a pair the corpus never had


# --- perplexity ----------------------------------------------------------------------------


def test_perplexity_of_uniform_model_is_v():
    m = NGramModel(1).fit(split_units("ab\nab\nab", "char"))  # a, b, </s>: each 1/3
    r = m.perplexity(split_units("ba\nab", "char"))
    assert m.V == 3 and r["perplexity"] == pytest.approx(3.0)
    assert r["bits_per_unit"] == pytest.approx(math.log2(3))


def test_perplexity_matches_direct_computation():
    m = fruit()
    text = "I love grapes"
    r = m.perplexity(split_units(text, "word"), n_bytes=len(text.encode()))
    ps = [2 / 3, 1, 1 / 3, 1]  # I | <s>, love | I, grapes | love, </s> | grapes
    bits = -sum(math.log2(p) for p in ps)
    assert r["events"] == 4 and r["zero_prob_events"] == 0
    assert r["perplexity"] == pytest.approx(2 ** (bits / 4))
    assert r["bits_per_byte"] == pytest.approx(bits / len(text))


def test_unseen_event_is_infinite_without_smoothing_finite_with():
    units = split_units("you love grapes\nI hate pears", "word")
    r = fruit().perplexity(units, n_bytes=30)
    assert r["perplexity"] == math.inf and r["bits_per_byte"] == math.inf
    assert r["zero_prob_events"] == 3  # hate|I, pears|hate, </s>|pears
    assert r["oov_units"] == 2  # hate, pears
    s = fruit(add_k=0.1).perplexity(units)
    assert math.isfinite(s["perplexity"]) and s["perplexity"] > 1 and s["zero_prob_events"] == 0


@pytest.mark.slow
def test_austen_trigrams_fit_in_seconds(corpora):
    from pocketgpt.text.corpora import read_corpus

    units = split_units(read_corpus("austen"), "word")
    t = time.perf_counter()
    m = NGramModel(3).fit(units)
    assert time.perf_counter() - t < 30  # a few seconds alone; generous for shared CI cores
    assert m.V > 10_000 and m.stats()["cells"] < m.stats()["dense_cells"] / 1e6
    assert m.prob(["It", "is"], "a") > 0


# --- the CLI -------------------------------------------------------------------------------


def test_cli_json_worked_example(cli, tmp_path):
    f = tmp_path / "fruit.txt"
    f.write_text(FRUIT, encoding="utf-8")
    out = json.loads(
        cli("ngram", "--n", "2", "--words", "--corpus", str(f), "--json", "--eval", str(f)).stdout
    )
    assert out["probs"]["I"] == {"love": 1.0}
    assert out["probs"]["love"] == pytest.approx({"oranges": 2 / 3, "grapes": 1 / 3})
    assert out["vocab_size"] == 6 and out["eval"]["zero_prob_events"] == 0
    gen = ["ngram", "--n", "3", "--corpus", str(f), "--generate", "40", "--prompt", "I l", "--json"]
    a, b = json.loads(cli(*gen, "--seed", "3").stdout), json.loads(cli(*gen, "--seed", "3").stdout)
    assert a["generated"] == b["generated"] and a["generated"].startswith("I l")


def test_cli_human_view_and_infinite_perplexity(cli, tmp_path):
    f, g = tmp_path / "train.txt", tmp_path / "eval.txt"
    f.write_text("春眠不觉晓\n处处闻啼鸟\n", encoding="utf-8")
    g.write_text("夜来风雨声", encoding="utf-8")
    out = cli("ngram", "--corpus", str(f), "--eval", str(g)).stdout
    assert "V^n" in out and "perplexity: inf" in out
    out = json.loads(cli("ngram", "--corpus", str(f), "--eval", str(g), "--add-k", "1", "--json").stdout)
    assert out["eval"]["perplexity"] > 1 and out["unseen_context_prob"] == pytest.approx(
        1 / out["vocab_size"]
    )
    inf = json.loads(cli("ngram", "--corpus", str(f), "--eval", str(g), "--json").stdout)["eval"]
    assert inf["perplexity"] is None and inf["zero_prob_events"] == 6
    # GPT-2 splits these characters into byte tokens: the table shows their bytes, not U+FFFD
    out = cli("ngram", "--corpus", str(f), "--tokenizer", "gpt2", "--top", "2", "--generate", "5").stdout
    assert "\\x" in out and "\ufffd" not in out.split("generated:")[0]


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"caf\xe9 au lait\n"])
def test_cli_bad_corpus_is_one_line_error(cli, tmp_path, content):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    proc = cli("ngram", "--corpus", str(f), check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bad.txt" in proc.stderr and "Traceback" not in proc.stderr
