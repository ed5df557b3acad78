"""GPT-1 task formats (exact marker layout, truncation, labels) and SFT rows (assistant-only
targets checked against the chat template's mask, packing keeps every target)."""

from __future__ import annotations

import pytest

from pocketgpt.errors import DataError
from pocketgpt.text import formats, specials
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.chat import POCKETGPT


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = "the movie was great. 这部电影很好。 a man sleeps. nobody sleeps. 3 + 4 = 7\n" * 20
    return Tokenizer.train(text, 256 + len(specials.RESERVED) + 40, special_tokens=specials.RESERVED, progress=False)


def _sp(tok, name):
    return tok.special_tokens[name]


def test_classification_and_entailment_layout(tok):
    S, D, E = (_sp(tok, s) for s in (specials.START, specials.DELIM, specials.EXTRACT))
    got = formats.encode_task("classification", {"text": "这部电影很好。", "label": "pos"}, tok, labels=["neg", "pos"])
    assert got.sequences == [[S] + tok.encode("这部电影很好。") + [E]] and got.label == 1
    got = formats.encode_task("entailment", {"premise": "a man sleeps.", "hypothesis": "nobody sleeps.",
                                             "label": "contradiction"}, tok, labels=["contradiction", "entailment"])
    assert got.sequences == [[S] + tok.encode("a man sleeps.") + [D] + tok.encode("nobody sleeps.") + [E]]
    assert got.label == 0


def test_similarity_both_orders_and_multiple_choice(tok):
    S, D, E = (_sp(tok, s) for s in (specials.START, specials.DELIM, specials.EXTRACT))
    a, b = tok.encode("a man"), tok.encode("nobody")
    got = formats.encode_task("similarity", {"text_a": "a man", "text_b": "nobody", "label": 1}, tok, labels=["0", "1"])
    assert got.sequences == [[S] + a + [D] + b + [E], [S] + b + [D] + a + [E]] and got.label == 1
    got = formats.encode_task("multiple-choice", {"context": "3 + 4 =", "choices": ["7", "8", "9"], "label": 0}, tok)
    assert len(got.sequences) == 3 and got.label == 0
    assert all(s[0] == S and s[-1] == E and D in s for s in got.sequences)


def test_marker_text_in_data_stays_text_and_long_inputs_keep_their_end(tok):
    E = _sp(tok, specials.EXTRACT)
    got = formats.encode_task("classification", {"text": "<|extract|> great", "label": "a"}, tok, labels=["a", "b"])
    assert got.sequences[0].count(E) == 1  # the typed marker is characters, not the token
    long = formats.encode_task("classification", {"text": "the movie was great. " * 50}, tok, max_len=20)
    seq = long.sequences[0]
    assert len(seq) == 20 and seq[-1] == E and long.label == -1
    assert seq[-4:-1] == tok.encode("the movie was great. " * 50)[-3:]


def test_bad_task_records(tok):
    with pytest.raises(DataError, match="'hypothesis' is missing"):
        formats.encode_task("entailment", {"premise": "x", "label": "a"}, tok, labels=["a", "b"])
    with pytest.raises(DataError, match="not one of the training labels"):
        formats.encode_task("classification", {"text": "x", "label": "zzz"}, tok, labels=["a", "b"])
    with pytest.raises(DataError, match="index of the right answer"):
        formats.encode_task("multiple-choice", {"context": "x", "choices": ["a", "b"], "label": 5}, tok)
    with pytest.raises(DataError, match="at least 2 distinct"):
        formats.label_set("classification", [{"text": "x", "label": "a"}])
    plain = Tokenizer.train("hello world " * 10, 256 + 1 + 5, progress=False)
    with pytest.raises(DataError, match="reserves them"):
        formats.encode_task("classification", {"text": "x"}, plain)


CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3 + 4 = ?"},
        {"role": "assistant", "content": "7"}, {"role": "user", "content": "这部电影很好吗?"},
        {"role": "assistant", "content": "很好。"}]


def test_sft_targets_are_the_next_assistant_tokens(tok):
    ids, targets = formats.sft_example(POCKETGPT, tok, CONV)
    _, mask = POCKETGPT.encode_with_mask(tok, CONV)
    assert len(ids) == len(targets) and targets[-1] == -1
    for t in range(len(ids) - 1):
        assert targets[t] == (ids[t + 1] if mask[t + 1] else -1)
    trained = tok.decode([y for y in targets if y >= 0])
    assert trained == "7<|end|>很好。<|end|>"  # the answers and the turn ends, nothing else
    with pytest.raises(DataError, match="no assistant turn"):
        formats.sft_example(POCKETGPT, tok, CONV[:2])


def test_pack_keeps_every_target_and_fills_rows(tok):
    exs = [formats.sft_example(POCKETGPT, tok, CONV[:3]) for _ in range(5)] + [formats.sft_example(POCKETGPT, tok, CONV)]
    n = len(exs[0][0])
    rows = formats.pack(exs, block_size=3 * n, pad_id=formats.pad_id_of(tok))
    assert all(len(x) == len(y) == 3 * n for x, y in rows)
    assert len(rows) < len(exs)  # several conversations share a row
    assert sorted(t for _, y in rows for t in y if t >= 0) == sorted(t for _, y in exs for t in y if t >= 0)
    pad = formats.pad_id_of(tok)
    assert pad == _sp(tok, specials.PAD)
    for x, y in rows:  # padding is never a target
        assert all(t == -1 for xi, t in zip(x, y, strict=True) if xi == pad)
    cut = formats.pack(exs[-1:], block_size=5, pad_id=pad)
    assert cut == [(exs[-1][0][:5], exs[-1][1][:5])]
