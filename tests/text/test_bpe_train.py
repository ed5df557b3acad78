"""BPE training: hand-computed merges, the tie rule, and an independent naive trainer."""

from __future__ import annotations

from collections import Counter

import pytest
from test_bpe_data import TEXT

from pocketgpt.errors import TokenizerError
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.bpe_pretokenize import GPT2_PATTERN, count_pretokens
from pocketgpt.text.bpe_reference import recover_merges
from pocketgpt.text.bpe_train import train_merges


def naive_train(word_counts: dict[bytes, int], n_merges: int) -> list[tuple[int, int]]:
    """Textbook BPE: recount every pair of every word after every merge. Same tie rule
    (highest count, then smallest pair) and the same rule of never re-creating existing bytes."""
    words = {tuple(w): c for w, c in word_counts.items()}
    vocab = [bytes([i]) for i in range(256)]
    merges, banned = [], set()
    while len(merges) < n_merges:
        counts: Counter = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:], strict=False):
                counts[p] += c
        candidates = [(-c, p) for p, c in counts.items() if p not in banned]
        if not candidates:
            break
        _, (a, b) = min(candidates)
        if vocab[a] + vocab[b] in vocab:
            banned.add((a, b))
            continue
        new = len(vocab)
        vocab.append(vocab[a] + vocab[b])
        merges.append((a, b))
        merged = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def test_wikipedia_example_first_merges():
    # "aaabdaaabac": aa occurs 4 times -> Z; then ab (2) ties with (Z, a) (2): the smaller pair
    # (97, 98) wins -> Y; then ZY (2) -> X, giving "XdXac" as in the Wikipedia article.
    merges = train_merges({b"aaabdaaabac": 1}, 3, progress=False)
    assert merges == [(97, 97), (97, 98), (256, 257)]
    tok = Tokenizer.train("aaabdaaabac", 256 + 3 + 1, progress=False)
    assert tok.merges == merges and tok.encode("aaabac") == [258, 97, 99]  # docs/tokenizer.md


def test_frequencies_weight_the_pairs():
    # "ab" once vs "cd" three times: cd wins although ab is smaller
    assert train_merges({b"ab": 1, b"cd": 3}, 1, progress=False) == [(99, 100)]
    assert train_merges({b"ab": 2, b"cd": 2}, 2, progress=False) == [(97, 98), (99, 100)]


def test_overlapping_pairs_counted_once_per_merge():
    # "aaaa" -> (aa, aa): the (a, a) pair has 3 occurrences but merges twice; then (aa, aa)
    assert train_merges({b"aaaa": 1}, 5, progress=False) == [(97, 97), (256, 256)]


def test_matches_naive_trainer_on_mixed_text():
    counts = count_pretokens(TEXT, GPT2_PATTERN)
    assert train_merges(counts, 300, progress=False) == naive_train(counts, 300)


def test_vocab_has_unique_bytes_and_tiktoken_recovers_the_merges():
    tok = Tokenizer.train(TEXT, 256 + 300 + 1, progress=False)
    assert len(set(tok.ranks)) == len(tok.ranks)
    # each token, split with tiktoken's rule using only lower ranks, is exactly its merge
    assert recover_merges(tok.ranks) == tok.merges


def test_vocab_size_counts_bytes_merges_and_specials():
    tok = Tokenizer.train(TEXT, 300, special_tokens=["<|endoftext|>", "<|pad|>"], progress=False)
    assert tok.vocab_size == 300 and len(tok.merges) == 300 - 256 - 2
    assert tok.special_tokens == {"<|endoftext|>": 298, "<|pad|>": 299}


def test_specials_in_the_corpus_are_not_learned():
    tok = Tokenizer.train("<|endoftext|>hello<|endoftext|>" * 50, 270, progress=False)
    assert all(b"<|" not in t and b"|>" not in t for t in tok.ranks)


def test_bad_training_inputs():
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(TEXT, 256, progress=False)
    with pytest.raises(TokenizerError, match="empty"):
        Tokenizer.train("  \n", 300, progress=False)
    with pytest.raises(TokenizerError, match="unknown pattern"):
        Tokenizer.train(TEXT, 300, pattern="gpt5", progress=False)


def test_cl100k_pattern_splits_digits_in_threes():
    tok = Tokenizer.train(TEXT, 300, pattern="cl100k", progress=False)
    assert tok.decode(tok.encode("12345 abc")) == "12345 abc"
    pieces = [tok.token_bytes(i) for i in tok.encode("12345")]
    assert b"".join(pieces) == b"12345" and all(len(p) <= 3 for p in pieces)
