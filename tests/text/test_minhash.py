"""MinHash and LSH against exact set arithmetic: the Jaccard estimate, the S-curve, the key set."""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt.text.minhash import (
    KeySet,
    LSHIndex,
    MinHasher,
    candidate_probability,
    choose_bands,
    jaccard_estimate,
    shingle_hashes,
)


def random_pair(rng: np.random.Generator, size: int, overlap: int) -> tuple[set[int], set[int], float]:
    """Two random sets of `size` 32-bit ints sharing `overlap` of them, and their exact Jaccard."""
    pool = rng.choice(2**32 - 1, size=2 * size, replace=False)
    a = set(pool[:size].tolist())
    b = set(pool[size - overlap : 2 * size - overlap].tolist())
    return a, b, len(a & b) / len(a | b)


@pytest.mark.parametrize("overlap", [0, 50, 150, 250, 300])
def test_jaccard_estimate_close_to_exact(overlap):
    rng = np.random.default_rng(overlap)
    hasher = MinHasher(num_perm=128, seed=overlap)
    for _ in range(5):
        a, b, exact = random_pair(rng, 300, overlap)
        est = jaccard_estimate(hasher.signature(np.array(sorted(a))), hasher.signature(np.array(sorted(b))))
        assert abs(est - exact) < 0.1, (est, exact)


def test_signature_is_a_set_function():
    """Order and repeats do not change a set, so they must not change its signature."""
    hasher = MinHasher(64)
    x = np.array([5, 9, 1, 77, 3], dtype=np.uint32)
    sig = hasher.signature(x)
    assert sig.shape == (64,) and sig.dtype == np.uint32
    assert np.array_equal(sig, hasher.signature(np.concatenate([x[::-1], x])))
    assert not np.array_equal(sig, hasher.signature(x[:-1]))


def test_shingle_hashes_match_distinct_ngrams():
    text = "人民日报人民日报 the cat sat on the mat"
    hashes = shingle_hashes(text, 3)
    grams = [text[i : i + 3] for i in range(len(text) - 2)]
    assert hashes.shape == (len(grams),)
    assert len(set(hashes.tolist())) == len(set(grams))  # equal n-grams hash equal, distinct ones differ
    assert shingle_hashes("ab", 5).shape == (1,)  # a text shorter than n is one shingle


def test_lsh_candidate_rate_follows_s_curve():
    """Share of pairs that land in a common band vs 1 - (1 - s^r)^b (MMDS 3.4)."""
    bands, rows = 16, 4
    hasher = MinHasher(bands * rows, seed=3)
    rng = np.random.default_rng(3)
    for overlap in (60, 130, 170):  # Jaccard 0.25, 0.63, 0.89 for sets of 200
        hits, trials = 0, 300
        for t in range(trials):
            a, b, s = random_pair(rng, 200, overlap)
            index = LSHIndex(bands, rows, seed=t)
            index.seen_similar(hasher.signature(np.array(sorted(a))))
            hits += index.seen_similar(hasher.signature(np.array(sorted(b))))
        want = candidate_probability(s, bands, rows)
        assert abs(hits / trials - want) < 0.1, (s, hits / trials, want)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_choose_bands_puts_midpoint_at_threshold(threshold):
    b, r = choose_bands(threshold, 128)
    assert b * r <= 128
    assert abs((1 / b) ** (1 / r) - threshold) < 0.03
    assert candidate_probability(threshold + 0.15, b, r) > candidate_probability(threshold - 0.15, b, r) + 0.5


def test_keyset_matches_python_set():
    rng = np.random.default_rng(0)
    keys = KeySet(batch=64)  # small batch: many merges into the sorted array
    ref: set[int] = set()
    for _ in range(200):
        batch = rng.integers(0, 2**20, size=5, dtype=np.uint64)  # small range: many repeats
        probe = rng.integers(0, 2**20, size=5, dtype=np.uint64)
        assert keys.contains_any(probe) == bool(ref & set(probe.tolist()))
        keys.add(batch)
        ref |= set(batch.tolist())
    assert len(keys) == len(ref)
    assert keys.sorted.size > 0 and np.all(np.diff(keys.sorted.astype(np.int64)) > 0)
