"""Near-duplicate detection: MinHash signatures and locality-sensitive hashing (LSH) in numpy.

The recipe (Broder 1997, "On the resemblance and containment of documents"; Leskovec, Rajaraman
and Ullman, *Mining of Massive Datasets*, ch. 3):

    text -> shingles (character n-grams, so it works for Chinese, which has no spaces)
         -> k hash functions; for each, the minimum over the shingles  = the signature (k,)
         -> b bands of r rows; each band hashed to one 64-bit key       = the LSH keys (b,)

For one random hash function, P[min h(A) == min h(B)] = |A & B| / |A | B| = Jaccard(A, B), so the
share of equal signature entries estimates the Jaccard similarity s. Two documents become
*candidates* when all r rows of at least one band agree, which happens with probability
1 - (1 - s^r)^b: an S-curve that rises steeply around s = (1/b)^(1/r).

The index keeps only band keys (8 bytes each), never the documents, so it grows with the number
of documents, not their size. Knows nothing of files or cleaning rules (see clean.py).
"""

from __future__ import annotations

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
BLOCK = 4096  # shingles hashed per step: bounds the (k, BLOCK) temporary on very long documents


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """32-bit hashes of the character n-grams of `text` (shape (len(text) - n + 1,), uint32).

    A whole text shorter than n is one shingle. Each n-gram's code points are combined by a
    polynomial hash mod 2^64 (numpy wraps around), then folded to 32 bits by a multiply-shift.
    """
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)  # (L,)
    if cp.size == 0:
        return np.zeros(1, dtype=np.uint32)
    n = min(n, cp.size)
    m = cp.size - n + 1
    h = np.zeros(m, dtype=np.uint64)  # (m,)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * np.uint64(0x100000001B3) + cp[j : j + m]  # FNV prime as the polynomial base
        h = (h * np.uint64(0x9E3779B97F4A7C15)) >> SHIFT32  # (m,) fold: the high bits mix every input bit
    return h.astype(np.uint32)


class MinHasher:
    """k random hash functions h_i(x) = ((a_i * x + b_i) mod 2^64) >> 32 on 32-bit x.

    This is Dietzfelbinger's multiply-add-shift family (1996): a universal hash that needs one
    multiply per entry, so numpy applies all k of them to a block of shingles at once. It stands
    in for the random permutations of the theory.
    """

    def __init__(self, num_perm: int = 128, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, 2**63, size=(num_perm, 1), dtype=np.uint64) | np.uint64(1)  # (k, 1) odd
        self.b = rng.integers(0, 2**63, size=(num_perm, 1), dtype=np.uint64)  # (k, 1)

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """The MinHash signature of a set given as hashes (any ints < 2^32): shape (k,), uint32."""
        x = np.asarray(hashes, dtype=np.uint64).reshape(-1)  # (m,)
        sig = np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint64)  # (k,)
        with np.errstate(over="ignore"):
            for start in range(0, x.size, BLOCK):
                hv = self.a * x[None, start : start + BLOCK]  # (k, m')
                hv += self.b  # in place: these temporaries dominate the time
                # >> 32 is monotone, so it commutes with min: shift the k minima, not all k * m' values
                np.minimum(sig, hv.min(axis=1) >> SHIFT32, out=sig)
        return sig.astype(np.uint32)

    def text_signature(self, text: str, n: int = 5) -> np.ndarray:
        return self.signature(shingle_hashes(text, n))


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Share of equal signature entries: an unbiased estimate of Jaccard(A, B), std sqrt(s(1-s)/k)."""
    return float(np.mean(sig_a == sig_b))


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P[two documents with Jaccard s share at least one band] = 1 - (1 - s^r)^b (MMDS 3.4.2)."""
    return 1.0 - (1.0 - s**rows) ** bands


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """The (bands, rows), bands * rows <= num_perm, whose S-curve midpoint (1/b)^(1/r) is nearest
    `threshold`. Unused signature rows are simply ignored."""
    best = min(
        ((num_perm // r, r) for r in range(1, num_perm + 1)),
        key=lambda br: (abs((1 / br[0]) ** (1 / br[1]) - threshold), -br[0]),
    )
    return best


class KeySet:
    """A set of 64-bit keys at ~8 bytes each: a sorted numpy array plus a small Python set of
    recent keys, merged into the array every `batch` additions (a Python set costs ~70 bytes a key,
    which would make the index larger than a corpus of short documents)."""

    def __init__(self, batch: int = 1 << 11) -> None:
        self.sorted = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()
        self.batch = batch

    def __len__(self) -> int:
        return self.sorted.size + len(self.recent)

    def contains_any(self, keys: np.ndarray) -> bool:
        if self.recent and not self.recent.isdisjoint(keys.tolist()):
            return True
        return bool(self._in_sorted(keys).any())

    def add(self, keys: np.ndarray) -> None:
        self.recent.update(keys.tolist())
        if len(self.recent) >= self.batch:
            fresh = np.sort(np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent)))
            fresh = fresh[~self._in_sorted(fresh)]
            # one new array of old + fresh (np.union1d would hold ~4 copies at its peak)
            self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, fresh), fresh)
            self.recent.clear()

    def _in_sorted(self, keys: np.ndarray) -> np.ndarray:
        if self.sorted.size == 0:
            return np.zeros(keys.shape, dtype=bool)
        i = np.minimum(np.searchsorted(self.sorted, keys), self.sorted.size - 1)
        return self.sorted[i] == keys


class LSHIndex:
    """Band keys of the documents seen so far; `seen_similar(sig)` asks and remembers in one step."""

    def __init__(self, bands: int, rows: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.bands, self.rows = bands, rows
        # one random odd multiplier per (band, row): a band's key is a random linear hash of its rows,
        # different per band so equal rows in different bands do not collide
        self.mult = rng.integers(1, 2**63, size=(bands, rows), dtype=np.uint64) | np.uint64(1)  # (b, r)
        self.keys = KeySet()

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        rows = sig[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)  # (b, r)
        with np.errstate(over="ignore"):
            return (rows * self.mult).sum(axis=1, dtype=np.uint64)  # (b,)

    def seen_similar(self, sig: np.ndarray, insert: bool = True) -> bool:
        """True if a band of `sig` matches an earlier document's; otherwise remember `sig`'s bands."""
        keys = self.band_keys(sig)
        if self.keys.contains_any(keys):
            return True
        if insert:
            self.keys.add(keys)
        return False
