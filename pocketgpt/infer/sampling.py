"""Choosing the next token from a row of logits: greedy, temperature, top-k, top-p, min-p, penalties.

    logit bias:   add a fixed amount to chosen token ids (OpenAI's `logit_bias`)
    repetition:   a seen token's logit is divided by r if positive, multiplied by r if negative
                  (Keskar et al. 2019, CTRL, sec. 4.1); "seen" = prompt + generated, as `transformers` does
    presence:     logit -= presence_penalty  if the token was generated at least once   (OpenAI API)
    frequency:    logit -= frequency_penalty * (times the token was generated)          (OpenAI API)
    temperature:  softmax(logits / T); T -> 0 is greedy (argmax), T > 1 flattens the distribution
    top-k:        keep the k highest-scoring tokens (Fan et al. 2018)
    top-p:        keep the smallest set of tokens whose probability mass is >= p (Holtzman et al. 2019)
    min-p:        keep tokens with probability >= min_p * (the top token's probability) (Nguyen et al. 2024)

Filters work on logits and set the removed entries to -inf, so they compose in the usual order
(bias and penalties, then temperature, then top-k, top-p, min-p). Randomness comes only from the
`torch.Generator` passed in, so a seed reproduces a sample. Knows nothing of models, caches or text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pocketgpt.errors import DataError


@dataclass
class SamplingParams:
    """Everything that decides how one request picks its tokens and when it stops."""

    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0  # 1 = off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_ids: tuple[int, ...] = ()  # a stop token ends the text and is not included
    stop: tuple[str, ...] = ()  # stop strings (need a tokenizer): the text ends before the first one
    seed: int | None = None  # same seed -> same tokens; None -> fresh entropy
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stop_ids, self.stop = tuple(self.stop_ids), tuple(self.stop)
        problems = [
            msg
            for bad, msg in [
                (self.max_tokens < 0, "max_tokens must be >= 0"),
                (self.temperature < 0, "temperature must be >= 0"),
                (self.top_k is not None and self.top_k < 0, "top_k must be >= 0"),
                (self.top_p is not None and not 0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
                (self.min_p is not None and not 0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
                (self.repetition_penalty <= 0, "repetition_penalty must be > 0"),
                (any(s == "" for s in self.stop), "stop strings must be non-empty"),
            ]
            if bad
        ]
        if problems:
            raise DataError("sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalised(self) -> bool:
        return bool(
            self.repetition_penalty != 1.0
            or self.presence_penalty
            or self.frequency_penalty
            or self.logit_bias
        )


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


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is >= min_p times the most likely token's. In log space:
    logit >= max_logit + log(min_p), so no softmax is needed (the normaliser cancels)."""
    if min_p <= 0.0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(min_p, dtype=logits.dtype))
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_penalties(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor | None,
    generated_counts: torch.Tensor | None,
) -> torch.Tensor:
    """logits (V,) -> a penalised copy. `seen` (V,) bool: in prompt or output; `generated_counts` (V,):
    how often each token was generated so far."""
    return penalise_rows(logits[None], [params], [seen], [generated_counts])[0]


def penalise_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    seen: Sequence[torch.Tensor | None],
    counts: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """logits (n, V) -> a float32 penalised copy, each row with its own settings and history (`seen`,
    `counts` as in `apply_penalties`, per row). Logit biases go row by row (they are sparse); the
    repetition, presence and frequency penalties are one masked op over all the rows that use them."""
    logits = logits.float().clone()
    for i, p in enumerate(params):
        for token, bias in p.logit_bias.items():
            logits[i, token] += bias
    rep = [i for i, p in enumerate(params) if p.repetition_penalty != 1.0 and seen[i] is not None]
    if rep:
        x = logits[rep]  # (m, V)
        r = torch.tensor([params[i].repetition_penalty for i in rep], device=x.device)[:, None]  # (m, 1)
        hit = torch.stack([seen[i] for i in rep])  # (m, V)
        logits[rep] = torch.where(hit, torch.where(x > 0, x / r, x * r), x)
    pf = [
        i
        for i, p in enumerate(params)
        if counts[i] is not None and (p.presence_penalty or p.frequency_penalty)
    ]
    if pf:
        c = torch.stack([counts[i] for i in pf]).to(logits.dtype)  # (m, V)
        freq = torch.tensor([params[i].frequency_penalty for i in pf], device=c.device)[:, None]
        pres = torch.tensor([params[i].presence_penalty for i in pf], device=c.device)[:, None]
        logits[pf] -= freq * c + pres * (c > 0).to(c.dtype)
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature then top-k, top-p, min-p: (..., V) -> the logits whose softmax is sampled."""
    logits = logits.float() / params.temperature
    if params.top_k:
        logits = filter_top_k(logits, params.top_k)
    if params.top_p is not None:
        logits = filter_top_p(logits, params.top_p)
    if params.min_p is not None:
        logits = filter_min_p(logits, params.min_p)
    return logits


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """logits (..., V) -> the index of each row's first maximum (..., ): argmax, as
    `max(dim=-1).indices`, which torch 2.13 runs 1.5-3.5x faster than `argmax` on a CPU (8 x 4096:
    12 vs 42 us; 1 x 50257: 22 vs 63 us) and which also returns the first of tied maxima."""
    return logits.max(dim=-1).indices


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """One row of (already penalised) logits (V,) -> the next token id, greedy or sampled."""
    if params.greedy:
        return int(greedy_ids(logits))
    return sample_rows(logits[None], [params], [generator])[0]


def _filters(params: SamplingParams, V: int) -> tuple[float, int | None, float | None, float | None]:
    """The settings that shape a row's distribution, normalised so equal behaviour is an equal key."""
    k = params.top_k if params.top_k and params.top_k < V else None
    top_p = params.top_p if params.top_p is not None and params.top_p < 1.0 else None
    return params.temperature, k, top_p, params.min_p or None


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int]:
    """Rows of (already penalised) logits (n, V), each with its own settings and generator -> one
    sampled token id per row (no row may be greedy).

    Rows with the same filters are filtered together as one (m, V) block, so a batch of requests with
    the server's default settings costs one top-k / softmax / cumsum instead of m. With top-k the
    rest of the work runs on the k survivors only (top-k values come sorted, so top-p needs no sort
    of the whole vocabulary). Each row then draws one uniform number from its own generator and
    takes the token where its cumulative distribution passes it (inverse-CDF sampling): a seed
    reproduces a request whatever else runs beside it."""
    n, V = logits.shape
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(_filters(p, V), []).append(i)
    out = [0] * n
    for (temperature, k, top_p, min_p), rows in groups.items():
        x = logits[rows].float() / temperature  # (m, V)
        ids = None  # column -> token id, when the columns are no longer the vocabulary
        if k is not None:
            x, ids = x.topk(k, dim=-1)  # (m, k), largest first
        if top_p is not None:
            if ids is None:
                x, ids = x.sort(dim=-1, descending=True)
            probs = x.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs >= top_p  # enough mass before this token already
            drop[:, 0] = False
            x = x.masked_fill(drop, float("-inf"))
        if min_p is not None:
            x = filter_min_p(x, min_p)
        cdf = x.softmax(dim=-1).cumsum(dim=-1)  # (m, K)
        u = torch.cat([torch.rand(1, generator=generators[i], device=x.device) for i in rows])  # (m,)
        col = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=cdf.size(1) - 1)
        tokens = col if ids is None else ids.gather(-1, col)  # (m, 1)
        for i, t in zip(rows, tokens.flatten().tolist(), strict=True):
            out[i] = t
    return out


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,). temperature 0 means greedy."""
    if temperature <= 0.0:
        return greedy_ids(logits)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    probs = filter_logits(logits, params).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def top_probs(logits: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """logits (V,) -> the n most likely (token id, probability) pairs, most likely first."""
    probs = logits.float().softmax(dim=-1)  # (V,)
    top = probs.topk(min(n, probs.numel()))
    return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
