"""Training byte-level BPE: learn merges from a corpus (Sennrich et al. 2016; GPT-2's byte-level
variant, Radford et al. 2019).

Start from the 256 single bytes; repeatedly find the most frequent adjacent pair of tokens
inside pre-tokens and replace it by a new token. Pure Python, made fast by three ideas:

1. count each distinct pre-token once (with its frequency) instead of walking the corpus;
2. keep pair counts and, per pair, the set of words that contain it; after a merge visit only
   those words and patch only the pairs next to each merged occurrence;
3. a max-heap of (count, pair) with lazy invalidation: stale entries are fixed when popped;
4. a word is a `str` with one character per token id (chr(id)), so finding a pair and
   replacing it are C loops (`str.find`, `str.replace`, both left to right, non-overlapping:
   exactly BPE's greedy merge).

Tie rule (deterministic): the highest count wins; among equal counts the pair with the smallest
(left id, right id) wins, i.e. the pair of the older tokens. A merge whose bytes already exist
as a token is skipped, so every byte string has exactly one id: this keeps tiktoken's
"rank of the concatenated bytes" encoding equal to the classic "merge order" encoding.

Knows nothing of tiktoken, files, or special tokens (the caller removes them from the text).
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from tqdm import tqdm

Pair = tuple[int, int]
# A pair (a, b) is kept as the single int a * K + b: hashing an int is much cheaper than
# building and hashing a tuple, and the int order is the (a, b) order, so ties still go to
# the smallest (a, b).
K = 1 << 21
MAX_ID = 0x10FFFF  # the largest code point: ids are stored as characters


def train_merges(word_counts: dict[bytes, int], n_merges: int, *, progress: bool = True) -> list[Pair]:
    """Learn up to `n_merges` merges; merge i creates token id 256 + i.

    `word_counts` maps each distinct pre-token (UTF-8 bytes) to its frequency. Returns fewer
    merges only if the corpus runs out of pairs.
    """
    if 256 + n_merges > MAX_ID:
        raise ValueError(f"at most {MAX_ID - 255} merges")
    words = [w.decode("latin-1") for w in word_counts]  # byte b -> chr(b): one char per token
    freqs = list(word_counts.values())
    pair_counts, where = _count_pairs(words, freqs)
    heap = [(-c, p) for p, c in pair_counts.items()]
    heapq.heapify(heap)
    vocab = [bytes([i]) for i in range(256)]  # id -> bytes
    known = set(vocab)
    merges: list[Pair] = []
    bar = tqdm(total=n_merges, desc="bpe merges", unit="merge", disable=not progress, leave=False)
    while len(merges) < n_merges and heap:
        neg, key = heapq.heappop(heap)
        count = pair_counts.get(key, 0)
        if count <= 0 or count != -neg:  # stale: the count went down (re-push) or a newer entry exists
            if 0 < count < -neg:
                heapq.heappush(heap, (-count, key))
            continue
        pair = divmod(key, K)
        merged = vocab[pair[0]] + vocab[pair[1]]
        if merged in known:  # a second way to spell an existing token: never a new id
            pair_counts.pop(key)
            continue
        new_id = len(vocab)
        vocab.append(merged)
        known.add(merged)
        merges.append(pair)
        for p in _apply_merge(pair, new_id, words, freqs, pair_counts, where):
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
        bar.update(1)
    bar.close()
    return merges


def _count_pairs(words: list[str], freqs: list[int]) -> tuple[dict[int, int], dict[int, set[int]]]:
    """Weighted counts of adjacent pairs, and for each pair the indices of words holding it."""
    pair_counts: dict[int, int] = defaultdict(int)
    where: dict[int, set[int]] = defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs, strict=True)):
        ids = w.encode("latin-1")  # iterating bytes yields the ids as ints
        for a, b in zip(ids, ids[1:], strict=False):
            pair_counts[a * K + b] += f
            where[a * K + b].add(i)
    return pair_counts, where


def _apply_merge(
    pair: Pair,
    new_id: int,
    words: list[str],
    freqs: list[int],
    pair_counts: dict[int, int],
    where: dict[int, set[int]],
) -> set[int]:
    """Replace every non-overlapping (a, b), left to right, by `new_id` in the words that hold
    it, patching the counts of only the pairs next to each occurrence: (left, a) becomes
    (left, new) and (b, right) becomes (new, right). When two occurrences touch ("a b a b") the
    left neighbour is already the new token, so we count (new, new), not (new, a).
    Returns the pairs whose count went up (all hold `new_id`). This loop is the hot spot of
    training, hence one flat function."""
    a, b = pair
    key, bk, nk = a * K + b, b * K, new_id * K
    target, new_char = chr(a) + chr(b), chr(new_id)
    # pairs holding new_id are brand new: collect their words here, hand them to `where` at the end
    born: dict[int, set[int]] = defaultdict(set)
    for i in where.pop(key, ()):
        w = words[i]
        j = w.find(target)  # C-speed scan straight to the next occurrence
        if j < 0:  # stale membership: an earlier merge already took the pair from this word
            continue
        f, n, end = freqs[i], len(w), -1
        while j >= 0:
            if j:
                left = nk if j == end else ord(w[j - 1]) * K
                pair_counts[left + a] -= f
                pair_counts[left + new_id] += f
                born[left + new_id].add(i)
            end = j + 2
            if end < n:
                right = ord(w[end])
                pair_counts[bk + right] -= f
                pair_counts[nk + right] += f
                born[nk + right].add(i)
            j = w.find(target, end)
        words[i] = w.replace(target, new_char)  # the same greedy left-to-right merge, in C
    pair_counts.pop(key, None)  # greedy merging leaves no (a, b) behind
    where.update(born)
    return set(born)
