"""A pure-Python BPE encoder, written to be read and to check the fast one.

It applies merges the classic way (minbpe, Karpathy 2024): in each pre-token, find the adjacent
pair with the earliest merge, replace it, repeat. tiktoken instead merges by the rank of the
*concatenated bytes*; the two agree when every byte string has one id (bpe_train.py guarantees
it), and tests/text/test_bpe_reference.py checks that they do. Slow on purpose: no caching.

Also recovers the merge list from a bare rank table (a tiktoken file carries no merges).
"""

from __future__ import annotations

import regex

from pocketgpt.errors import TokenizerError


class ReferenceEncoder:
    """Encode text with `merges` (pairs of ids; a merge's new id is its token's rank)."""

    def __init__(self, ranks: dict[bytes, int], merges: list[tuple[int, int]], specials: dict[str, int], pat: str):
        self.byte_ids = [ranks[bytes([b])] for b in range(256)]
        id_to_bytes = {i: t for t, i in ranks.items()}
        # the earlier a merge, the lower the id it creates: that id is the pair's priority
        self.merge_rank = {(a, b): ranks[id_to_bytes[a] + id_to_bytes[b]] for a, b in merges}
        self.specials = specials
        self.pat = regex.compile(pat)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        # cut at specials but keep them: split on a capturing group returns the separators too
        parts = regex.split(
            "(" + "|".join(regex.escape(s) for s in sorted(self.specials, key=len, reverse=True)) + ")", text
        ) if self.specials else [text]
        for part in parts:
            if part in self.specials:
                ids.append(self.specials[part])
                continue
            for word in self.pat.findall(part):
                ids.extend(self.encode_word(word.encode("utf-8")))
        return ids

    def encode_word(self, word: bytes) -> list[int]:
        tokens = [self.byte_ids[b] for b in word]
        while len(tokens) >= 2:
            pairs = set(zip(tokens, tokens[1:], strict=False))
            best = min(pairs, key=lambda p: self.merge_rank.get(p, float("inf")))
            if best not in self.merge_rank:
                break
            tokens = _replace(tokens, best, self.merge_rank[best])
        return tokens


def _replace(tokens: list[int], pair: tuple[int, int], new: int) -> list[int]:
    out, i = [], 0
    while i < len(tokens):
        if i + 1 < len(tokens) and (tokens[i], tokens[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int | None = None) -> list[bytes]:
    """tiktoken's rule in pure Python: merge the adjacent pair whose concatenation has the lowest
    rank (below `max_rank` if given) until none is left."""
    parts = [bytes([b]) for b in token]
    while len(parts) >= 2:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (max_rank is None or r < max_rank) and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best_rank is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[int, int]]:
    """The merge list, in rank order, from a rank table alone: a token's merge is the two parts
    left when its bytes are encoded with only the tokens ranked before it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = bpe_split(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise TokenizerError(f"token {token!r} (rank {rank}) is not the merge of two earlier tokens")
        merges.append((ranks[parts[0]], ranks[parts[1]]))
    return merges
