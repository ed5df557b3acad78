"""Training byte-level BPE: learn merges from a corpus (Sennrich et al. 2016; GPT-2's byte-level
variant, Radford et al. 2019).

Start from the 256 single bytes; repeatedly find the most frequent adjacent pair of tokens
inside pre-tokens and replace it by a new token. Pure Python, made fast by three ideas:

1. count each distinct pre-token once (with its frequency) instead of walking the corpus;
2. keep pair counts and, per pair, the set of words that contain it, and after a merge
   recount only those words;
3. a max-heap of (count, pair) with lazy invalidation: stale entries are fixed when popped.

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


def train_merges(word_counts: dict[bytes, int], n_merges: int, *, progress: bool = True) -> list[Pair]:
    """Learn up to `n_merges` merges; merge i creates token id 256 + i.

    `word_counts` maps each distinct pre-token (UTF-8 bytes) to its frequency. Returns fewer
    merges only if the corpus runs out of pairs.
    """
    if 256 + n_merges >= K:
        raise ValueError(f"at most {K - 256} merges")
    words = [list(w) for w in word_counts]
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


def _count_pairs(words: list[list[int]], freqs: list[int]) -> tuple[dict[int, int], dict[int, set[int]]]:
    """Weighted counts of adjacent pairs, and for each pair the indices of words holding it."""
    pair_counts: dict[int, int] = defaultdict(int)
    where: dict[int, set[int]] = defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs, strict=True)):
        for a, b in zip(w, w[1:], strict=False):
            pair_counts[a * K + b] += f
            where[a * K + b].add(i)
    return pair_counts, where


def _apply_merge(
    pair: Pair,
    new_id: int,
    words: list[list[int]],
    freqs: list[int],
    pair_counts: dict[int, int],
    where: dict[int, set[int]],
) -> set[int]:
    """Replace `pair` by `new_id` in the words that hold it, patching the counts of only the
    neighbouring pairs. Returns the pairs whose count went up (they all contain `new_id`)."""
    key = pair[0] * K + pair[1]
    grown: list[int] = []
    for i in where.pop(key, ()):
        n_before = len(grown)
        new = _merge_word(words[i], pair, new_id, freqs[i], pair_counts, grown)
        if new is not None:  # else stale membership: an earlier merge already took the pair
            words[i] = new
            for p in grown[n_before:]:
                where[p].add(i)
    pair_counts.pop(key, None)  # greedy left-to-right merging leaves no (a, b) behind
    return set(grown)


def _merge_word(
    w: list[int], pair: Pair, new_id: int, f: int, pair_counts: dict[int, int], grown: list[int]
) -> list[int] | None:
    """`w` with every non-overlapping `pair`, left to right, replaced by `new_id`, or None if
    there is none. Each merge turns (left, a) into (left, new) and (b, right) into (new, right);
    `left` is read from the *new* word so that "a b a b" counts (new, new), not (new, a).
    The pairs that gained count are appended to `grown`."""
    a, b = pair
    bk, nk = b * K, new_id * K
    out: list[int] = []
    n = len(w)
    start = j = 0
    index, push = w.index, grown.append  # bound once: this loop runs millions of times
    todo = w.count(a)  # counting first avoids a ValueError at the end of every scan
    while todo:
        j = index(a, j)  # C-speed scan to the next candidate
        todo -= 1
        if j + 1 < n and w[j + 1] == b:
            todo -= a == b  # the b we consume was one of the a's still to visit
            if j > start:
                out += w[start:j]
            if out:
                left = out[-1] * K
                pair_counts[left + a] -= f
                pair_counts[left + new_id] += f
                push(left + new_id)
            if j + 2 < n:
                right = w[j + 2]
                pair_counts[bk + right] -= f
                pair_counts[nk + right] += f
                push(nk + right)
            out.append(new_id)
            start = j = j + 2
        else:
            j += 1
    if start == 0:
        return None
    out += w[start:]
    return out
