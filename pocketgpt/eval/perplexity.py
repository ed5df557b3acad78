"""Perplexity and bits per byte of a language model on a text, with sliding windows.

A model with a context of `block_size` tokens cannot see a whole book at once. We slide a
window of up to `block_size` tokens along the text, `stride` tokens at a time, and in each
window score only the tokens no earlier window scored (the Hugging Face "perplexity of
fixed-length models" recipe). So every token is scored exactly once, and, except in the first
window, with at least `block_size - stride` tokens of context; `stride=1` gives every token the
full context (exact but slow), `stride=block_size` cuts the text into independent chunks.

    loss        = total nats / tokens scored           (mean cross-entropy per token)
    perplexity  = exp(loss)
    bits/byte   = total nats / ln 2 / UTF-8 bytes      (compares across tokenizers, and with n-grams)

The text is prefixed with <|endoftext|> when the tokenizer has it, so the first real token is
scored too and the total covers every byte. Knows nothing of files, corpora or the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import DataError


@dataclass(frozen=True)
class Window:
    """Inputs are tokens [begin, end) of the sequence; targets [begin+1, end+1); only targets at
    sequence positions >= `first_scored` count (earlier ones were scored by a previous window)."""

    begin: int
    end: int
    first_scored: int


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[Window]:
    """Windows over a sequence of `n_tokens` that score positions 1..n_tokens-1 once each."""
    if not 1 <= stride <= block_size:
        raise DataError(f"stride {stride} must be between 1 and the block size {block_size}")
    windows, scored_upto, begin = [], 1, 0  # position 0 has no context, so it is never a target
    while scored_upto < n_tokens:
        end = min(begin + block_size, n_tokens - 1)  # inputs [begin, end) predict [begin+1, end]
        if end + 1 > scored_upto:
            windows.append(Window(begin, end, scored_upto))
            scored_upto = end + 1
        begin += stride
    return windows


@torch.no_grad()
def score_tokens(model: nn.Module, ids: list[int], *, stride: int | None = None, batch_size: int = 8) -> tuple[float, int]:
    """(total nats, tokens scored) of `ids[1:]` given what precedes each, through sliding windows
    of the model's block size (`stride` default: half of it). Windows are batched, right-padded:
    a causal model never lets padding after a position change that position's logits."""
    block = model.config.block_size
    stride = stride or max(1, block // 2)
    windows = sliding_windows(len(ids), block, stride)
    seq = torch.tensor(ids, dtype=torch.long)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        T = max(w.end - w.begin for w in group)
        x = torch.zeros(len(group), T, dtype=torch.long)  # (B, T) padding id 0: never scored
        y = torch.full((len(group), T), -1, dtype=torch.long)  # (B, T) -1 = not scored
        for row, w in enumerate(group):
            n = w.end - w.begin
            x[row, :n] = seq[w.begin : w.end]
            skip = w.first_scored - (w.begin + 1)  # targets already scored by an earlier window
            y[row, skip:n] = seq[w.first_scored : w.end + 1]
        logits = model(x.to(device)).float()  # (B, T, V)
        nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1).to(device), ignore_index=-1, reduction="sum")
        total += nll.item()
        count += int((y != -1).sum())
    return total, count


def summarize(total_nats: float, n_tokens: int, n_bytes: int) -> dict:
    """Loss, perplexity and bits per byte from a total negative log-likelihood."""
    loss = total_nats / n_tokens if n_tokens else math.nan
    return {
        "tokens": n_tokens,
        "bytes": n_bytes,
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "bits_per_token": loss / math.log(2),
        "bits_per_byte": total_nats / math.log(2) / n_bytes if n_bytes else math.nan,
    }


def evaluate_lm(model: nn.Module, tokenizer, text: str, *, stride: int | None = None, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of a GPT-style model on `text` (see the module docstring)."""
    if not text:
        raise DataError("the evaluation text is empty; give a file or corpus with some text")
    ids = tokenizer.encode(text, allowed_special="none")  # the text's own "<|endoftext|>" is plain text here
    eot = tokenizer.special_tokens.get("<|endoftext|>")
    if eot is not None:
        ids = [eot] + ids
    n_bytes = len(text.encode("utf-8"))
    if eot is None:  # the first token has no context: it and its bytes are not scored
        n_bytes -= len(tokenizer.decode_bytes(ids[:1]))
    if len(ids) < 2:
        raise DataError("the evaluation text is a single token; give a longer text")
    total, count = score_tokens(model, ids, stride=stride, batch_size=batch_size)
    return {**summarize(total, count, n_bytes), "stride": stride or max(1, model.config.block_size // 2)}


def evaluate_ngram(model, text: str, unit: str = "char", tokenizer=None) -> dict:
    """The same row for an n-gram model (text/ngram.py): its unit is a character, word or token,
    so only bits per byte compares with a neural model. Unsmoothed, an unseen event makes the loss
    infinite (`zero_prob_events` counts them)."""
    from pocketgpt.text.ngram import split_units

    if not text:
        raise DataError("the evaluation text is empty; give a file or corpus with some text")
    ev = model.perplexity(split_units(text, unit, tokenizer), n_bytes=len(text.encode("utf-8")))
    loss = ev["bits_per_unit"] * math.log(2)
    return {
        "tokens": ev["events"],
        "bytes": ev["bytes"],
        "loss": loss,
        "perplexity": ev["perplexity"],
        "bits_per_token": ev["bits_per_unit"],
        "bits_per_byte": ev["bits_per_byte"],
        "zero_prob_events": ev["zero_prob_events"],
    }
