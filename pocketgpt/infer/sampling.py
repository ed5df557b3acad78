"""Choosing the next token from a row of logits: greedy, temperature, top-k, top-p (nucleus).

    temperature:  softmax(logits / T); T -> 0 is greedy (argmax), T > 1 flattens the distribution
    top-k:        keep the k highest-scoring tokens (Fan et al. 2018)
    top-p:        keep the smallest set of tokens whose probability mass is >= p (Holtzman et al. 2019)

Filters work on logits and set the removed entries to -inf, so they compose in the usual order
(temperature, then top-k, then top-p, as `transformers` applies them). Randomness comes only from
the `torch.Generator` passed in, so a seed reproduces a sample. Knows nothing of models or caches.
"""

from __future__ import annotations

import torch


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (..., V); the rest become -inf."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most-probable tokens whose total probability is >= p (at least one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p  # already enough mass without this token
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). temperature 0 means greedy."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
