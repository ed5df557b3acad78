"""The pure-Python reference encoder (classic merge order) gives the same ids as tiktoken's
core (rank of the concatenated bytes) on our trained vocabularies and on GPT-2's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bpe_data import TEXT

from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.bpe_reference import ReferenceEncoder, bpe_split, recover_merges

CJK = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
EMOJI = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
MIXED = st.text(st.one_of(CJK, EMOJI, st.sampled_from(list(" ,.，。\n'sthe")), st.characters()), max_size=80)


@pytest.fixture(scope="module", params=["gpt2", "cl100k"])
def pair(request):
    tok = Tokenizer.train(TEXT * 2, 900, pattern=request.param, progress=False)
    return tok, ReferenceEncoder(tok.ranks, tok.merges, tok.special_tokens, tok.pat_str)


def _clean(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=80))
def test_reference_equals_tiktoken_on_random_unicode(pair, text):
    tok, ref = pair
    text = _clean(text)
    assert ref.encode(text) == tok.encode(text)


@settings(max_examples=80, deadline=None)
@given(MIXED)
def test_reference_equals_tiktoken_on_chinese_and_emoji(pair, text):
    tok, ref = pair
    text = _clean(text)
    assert ref.encode(text) == tok.encode(text)


def test_reference_equals_tiktoken_on_the_training_text(pair):
    tok, ref = pair
    assert ref.encode(TEXT + "<|endoftext|>" + TEXT[:100]) == tok.encode(TEXT + "<|endoftext|>" + TEXT[:100])


def test_reference_on_gpt2():
    tok = Tokenizer.gpt2()
    ref = ReferenceEncoder(tok.ranks, tok.merges, tok.special_tokens, tok.pat_str)
    assert ref.encode("A journey of a thousand miles begins with a single step.") == [
        32, 7002, 286, 257, 7319, 4608, 6140, 351, 257, 2060, 2239, 13,
    ]
    assert ref.encode(TEXT) == tok.encode(TEXT)


def test_the_two_rules_can_disagree_on_a_vocabulary_training_would_not_make():
    # why the agreement needs care: "abc" made from (ab, c), but bc ranks before ab, so the
    # classic rule reaches a + bc and stops, while tiktoken merges a + bc by the rank of "abc".
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"bc": 256, b"ab": 257, b"abc": 258})
    # tiktoken's rule happily merges a + bc into abc ...
    assert bpe_split(ranks, b"abc") == [b"abc"]
    # ... but "abc" is not a merge of two earlier tokens that the classic rule would reach
    ref = ReferenceEncoder(ranks, [(98, 99), (97, 98), (257, 99)], {}, r"\S+")
    assert ref.encode("abc") == [97, 256]
    assert recover_merges(ranks)[-1] == (97, 256)  # tiktoken sees abc as a + bc, not ab + c
