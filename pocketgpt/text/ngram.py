"""The n-gram Markov-chain language model: the baseline every LLM tutorial starts from.

P(next | previous n-1 units) is estimated by counting (Jurafsky & Martin, *Speech and Language
Processing*, 3rd ed., ch. 3): P(w | h) = c(h, w) / c(h), optionally with add-k smoothing
P(w | h) = (c(h, w) + k) / (c(h) + k V). A unit is a character, a word, or a BPE token.

Sentences are lines. `split_units` marks each line's end with `EOS`; `fit` pads the start of
every sentence with n-1 `BOS` so the first units have a full context, and learns to predict
`EOS` like any other unit (that is how a generated sentence ends). `BOS` is never predicted.

Knows nothing of files, corpora or the CLI (see text/corpora.py, commands/ngram.py); the
tokenizer is passed in by the caller.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import regex

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
UNITS = ("char", "word", "token")

# A word: a run of letters/digits, with apostrophes inside (don't, Elizabeth's) and a number
# keeps its decimal point or thousands comma (3.5, 10,000); each CJK
# character alone (Chinese has no spaces, so a "word" would be a whole clause); anything else
# that is not whitespace is one punctuation token.
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
WORD_RE = regex.compile(
    rf"[{_CJK}]|\p{{N}}+(?:[.,]\p{{N}}+)+|(?:(?![{_CJK}])[\p{{L}}\p{{N}}\p{{M}}])+(?:['’](?:(?![{_CJK}])[\p{{L}}\p{{N}}\p{{M}}])+)*|\S"
)
_WIDE = regex.compile(
    rf"[{_CJK}\p{{Block=CJK_Symbols_and_Punctuation}}\p{{Block=Halfwidth_and_Fullwidth_Forms}}]"
)
_NO_SPACE_BEFORE = set(",.;:!?)]}%'’”…")
_NO_SPACE_AFTER = set("([{$‘“")

Unit = Hashable  # str for characters and words, int (a token id) for BPE tokens


def split_units(text: str, unit: str = "char", tokenizer: Any = None, *, end: bool = True) -> list:
    """Text -> a flat list of units, each non-empty line followed by EOS (the last line only if
    `end` or the text ends in a newline, so a prompt can be continued mid-sentence). Whitespace is a unit for "char" and
    "token", dropped for "word" (join_units puts it back)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if unit == "token" and tokenizer is None:
        raise ValueError("unit='token' needs a tokenizer")
    lines = [line for line in text.split("\n") if line.strip()]
    out: list = []
    for i, line in enumerate(lines):
        line = line.rstrip("\r")
        if unit == "char":
            out.extend(line)
        elif unit == "word":
            out.extend(WORD_RE.findall(line))
        else:
            out.extend(tokenizer.encode(line))
        if end or i < len(lines) - 1 or text.endswith("\n"):
            out.append(EOS)
    return out


def join_units(units: Sequence, unit: str = "char", tokenizer: Any = None) -> str:
    """Units -> text: EOS becomes a newline; words get spaces between Latin words, none next to
    CJK characters or before closing punctuation; tokens are decoded by the tokenizer."""
    lines: list[list] = [[]]
    for u in units:
        if u == EOS:
            lines.append([])
        elif u != BOS:
            lines[-1].append(u)
    if unit == "char":
        texts = ["".join(line) for line in lines]
    elif unit == "word":
        texts = [_join_words(line) for line in lines]
    else:
        texts = [tokenizer.decode([u for u in line if isinstance(u, int)]) for line in lines]
    return "\n".join(texts)


def _join_words(words: list[str]) -> str:
    """Re-insert the spaces `split_units` dropped: between words, not around CJK text or inside
    brackets, and a straight double quote alternates between opening and closing."""
    out, prev, quote_open = [], "", False
    for w in words:
        opening = w == '"' and not quote_open
        space = bool(prev) and not (
            (w in _NO_SPACE_BEFORE or (w == '"' and quote_open))
            or prev in _NO_SPACE_AFTER
            or (prev == '"' and quote_open)  # just after an opening quote
            or (w == prev and not w.isalnum())  # "--", "!!" were one mark in the text
            or _WIDE.match(w[0])
            or _WIDE.match(prev[-1])
        )
        if w == '"':
            quote_open = opening
        out.append(" " + w if space else w)
        prev = w
    return "".join(out)


class NGramModel:
    """P(next | the n-1 units before it), by counting. Stores only the n-grams seen: a dict
    from context tuple to a Counter of next units, never a dense V^n table."""

    def __init__(self, n: int, add_k: float = 0.0) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if add_k < 0:
            raise ValueError(f"add_k must be >= 0, got {add_k}")
        self.n, self.add_k = n, float(add_k)
        self.counts: dict[tuple, Counter] = {}  # context (n-1 units) -> Counter(next unit)
        self.totals: dict[tuple, int] = {}  # context -> c(h), the row sum
        self.vocab: list = []  # every unit the model can predict, EOS included (and UNK if add_k)
        self._vocab_set: set = set()
        self._lower: dict[int, dict[tuple, Counter]] = {}  # back-off tables, built on demand

    # --- training ------------------------------------------------------------------------

    def fit(self, units: Sequence) -> NGramModel:
        """Count every n-gram of `units` (as from split_units: sentences ended by EOS)."""
        if not units:
            raise ValueError("cannot fit an n-gram model on no units")
        pad = [BOS] * (self.n - 1)
        seq = list(pad)
        for u in units:  # every sentence starts with n-1 BOS, so its first units have a context
            seq.append(u)
            if u == EOS:
                seq.extend(pad)
        # One C-speed pass: count all n-grams of the padded stream, then drop those that end
        # in BOS (they straddle a sentence end: EOS is always followed by n-1 BOS).
        grams = Counter(zip(*(seq[i:] for i in range(self.n)), strict=False))
        self.counts, self.totals = {}, {}
        for gram, c in grams.items():
            if gram[-1] == BOS:
                continue
            ctx = gram[:-1]
            row = self.counts.get(ctx)
            if row is None:
                row = self.counts[ctx] = Counter()
            row[gram[-1]] = c
            self.totals[ctx] = self.totals.get(ctx, 0) + c
        seen = {u for row in self.counts.values() for u in row}
        # UNK stands for every unit never seen in training; it only gets mass with smoothing.
        self.vocab = sorted(seen, key=str) + ([UNK] if self.add_k > 0 else [])
        self._vocab_set = set(self.vocab)
        self._lower = {}
        return self

    # --- probabilities -------------------------------------------------------------------

    @property
    def V(self) -> int:
        return len(self.vocab)

    def context_of(self, history: Sequence) -> tuple:
        """The last n-1 units of `history`, left-padded with BOS (a sentence start)."""
        want = self.n - 1
        if want == 0:
            return ()
        ctx = tuple(history)[-want:]
        return (BOS,) * (want - len(ctx)) + ctx

    def prob(self, context: Sequence, next: Unit) -> float:
        """P(next | context). Unsmoothed, an unseen context or event has probability 0;
        add-k gives every one of the V^(n-1) x V cells (c + k) / (c(h) + kV)."""
        ctx = self.context_of(context)
        if next not in self._vocab_set:
            next = UNK
        row, total = self.counts.get(ctx), self.totals.get(ctx, 0)
        c = row.get(next, 0) if row else 0
        if self.add_k > 0:
            return (c + self.add_k) / (total + self.add_k * self.V)
        return c / total if total else 0.0

    def distribution(self, context: Sequence) -> dict:
        """The whole row P(. | context): only the seen next units without smoothing (the rest
        are 0; empty for an unseen context), every one of the V units with add-k."""
        ctx = self.context_of(context)
        if self.add_k > 0:
            return {u: self.prob(ctx, u) for u in self.vocab}
        row, total = self.counts.get(ctx), self.totals.get(ctx, 0)
        return {u: c / total for u, c in row.items()} if row else {}

    # --- generation ----------------------------------------------------------------------

    def generate(self, k: int, rng: random.Random, prompt_units: Sequence = ()) -> list:
        """Sample k units after `prompt_units` (the prompt itself is not returned). At a context
        never seen in training, back off to its longest seen suffix (drop the oldest unit, down
        to the unigram table, which is always seen) instead of sampling from nothing."""
        history = list(prompt_units)
        if EOS in history:  # only the unfinished last sentence is context
            history = history[len(history) - history[::-1].index(EOS) :]
        out: list = []
        for _ in range(k):
            u = self._sample(self.context_of(history), rng)
            out.append(u)
            history = [] if u == EOS else history + [u]
        return out

    def _sample(self, ctx: tuple, rng: random.Random) -> Unit:
        table = self.counts
        while ctx and ctx not in table:  # back off; the unigram table () is always seen
            ctx = ctx[1:]
            table = self._table(len(ctx) + 1)
        row = table[ctx]
        total = sum(row.values())
        while True:
            # add-k is a mixture: with weight c(h)/(c(h)+kV) the counts, else uniform over V
            # (P = (c+k)/(c(h)+kV) exactly), so sampling never has to build a V-sized row.
            if self.add_k > 0 and rng.random() * (total + self.add_k * self.V) >= total:
                u = rng.choice(self.vocab)
            else:
                u = rng.choices(list(row), weights=list(row.values()))[0]
            if u != UNK:  # UNK is no particular unit, so it cannot be written out
                return u

    def _table(self, order: int) -> dict[tuple, Counter]:
        """Counts of `order`-grams, derived from the n-gram counts by summing out the oldest
        context units (exact: with BOS padding every event has a full context)."""
        if order == self.n:
            return self.counts
        if order not in self._lower:
            table: dict[tuple, Counter] = {}
            for ctx, row in self._table(order + 1).items():
                table.setdefault(ctx[1:], Counter()).update(row)
            self._lower[order] = table
        return self._lower[order]

    # --- evaluation ----------------------------------------------------------------------

    def perplexity(self, units: Sequence, n_bytes: int | None = None) -> dict:
        """Perplexity 2^H over every predicted unit (each unit and each EOS, not BOS), where
        H = -(1/N) sum log2 P(unit | context) is the cross-entropy in bits per unit. One event
        of probability 0 makes H and the perplexity infinite; they are reported as such, with
        the count of such events. `n_bytes` (the UTF-8 size of the text) adds bits per byte,
        which compares across tokenizations and with neural models."""
        bits, events, zeros, oov = 0.0, 0, 0, 0
        history: list = []
        for u in units:
            if u != EOS and u not in self._vocab_set:
                oov += 1
            p = self.prob(self.context_of(history), u)
            events += 1
            if p > 0:
                bits -= math.log2(p)
            else:
                zeros += 1
            if u == EOS:
                history = []
            elif self.n > 1:
                history = (history + [u])[-(self.n - 1) :]
        h = math.inf if zeros else (bits / events if events else math.nan)
        out = {
            "events": events,
            "zero_prob_events": zeros,
            "oov_units": oov,
            "bits_per_unit": h,
            "perplexity": 2**h if math.isfinite(h) else h,
        }
        if n_bytes:
            out["bytes"] = n_bytes
            out["bits_per_byte"] = math.inf if zeros else bits / n_bytes
        return out

    # --- inspection ----------------------------------------------------------------------

    def stats(self) -> dict:
        """Size of the table: V, contexts seen, cells stored vs the V^n of a dense table."""
        return {
            "n": self.n,
            "add_k": self.add_k,
            "vocab_size": self.V,
            "contexts": len(self.counts),
            "cells": sum(len(row) for row in self.counts.values()),
            "dense_cells": self.V**self.n,
        }

    def top_contexts(self, m: int | None = None) -> list[tuple]:
        """Seen contexts, most frequent first (ties in a stable, readable order)."""
        ctxs = sorted(self.counts, key=lambda c: (-self.totals[c], [str(u) for u in c]))
        return ctxs if m is None else ctxs[:m]

    def to_json(self, top: int | None = None) -> dict:
        """{"probs": {context: {next: p}}, ...}: contexts and units as strings, a context's
        units joined by one space. With add-k, "probs" holds the seen cells and "unseen" the
        probability every other cell of that row has; a context never seen gets 1/V."""
        out: dict[str, Any] = self.stats()
        probs, unseen = {}, {}
        for ctx in self.top_contexts(top):
            key = " ".join(str(u) for u in ctx)
            probs[key] = {str(u): self.prob(ctx, u) for u, _ in self.counts[ctx].most_common()}
            if self.add_k > 0:
                unseen[key] = self.add_k / (self.totals[ctx] + self.add_k * self.V)
        out["probs"] = probs
        if self.add_k > 0:
            out["unseen"] = unseen
            out["unseen_context_prob"] = 1 / self.V
        return out
