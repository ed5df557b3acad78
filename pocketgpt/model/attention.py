"""Attention: every token looks at the others and takes a weighted average of what they offer.

    softmax(Q K^T / sqrt(d_k)) V        (Vaswani et al. 2017, "Attention Is All You Need", eq. 1)

Two implementations of the same formula, which the tests hold equal (forward and gradients):
  - `naive_attention`: the formula written out; also returns the (B, nh, Tq, Tk) weights, for tests and
    attention heatmaps.
  - `sdpa_attention`: `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
    kernels on GPU); the path models take unless someone asks for the weights.
Then the modules built on them: `SelfAttention` (fused qkv projection, grouped-query attention,
optional RoPE, KV cache), `CrossAttention` (queries from the decoder, keys/values from the encoder),
`KVCache` (preallocated per-layer key/value buffers for generation) and `SlotKVCache` (the same, with
a length per row, for continuous batching).

Masks are boolean, True = may attend, shaped (B or 1, 1 or nh, Tq, Tk). Masked scores become -inf
*before* the softmax so they get exactly zero weight; a row with nothing to attend to (a padding
query) outputs zeros rather than NaN. This module knows nothing of tokens, embeddings or losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.model.positions import RoPE


# -- masks ---------------------------------------------------------------------------------------
def causal_mask(t_q: int, t_k: int, device: torch.device | None = None) -> torch.Tensor:
    """(Tq, Tk) bool, True = may attend. Queries are the *last* Tq of the Tk positions (with a KV
    cache the new tokens come after the cached ones), so query i sits at position Tk - Tq + i."""
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(t_k, device=device)[None, :]  # (1, Tk)
    return k_pos <= q_pos  # (Tq, Tk)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, Tk) with 1 = real token, 0 = padding -> (B, 1, 1, Tk) bool: no query may attend to a pad."""
    return attention_mask.bool()[:, None, None, :]


def _combine(mask: torch.Tensor | None, causal: bool, t_q: int, t_k: int, device: torch.device) -> torch.Tensor | None:
    """The one boolean mask that means `mask AND causal` (None when nothing is masked). A single query
    is the newest position and may see every key, so its causal mask is all True and is skipped."""
    if causal and t_q > 1:
        c = causal_mask(t_q, t_k, device)  # (Tq, Tk)
        return c if mask is None else mask & c
    return mask


# -- the formula, twice --------------------------------------------------------------------------
def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. q (B, nh, Tq, hs), k/v (B, nh, Tk, hs) -> out (B, nh, Tq, hs), weights (B, nh, Tq, Tk).

    Masked scores are set to -inf *before* the softmax: exp(-inf) = 0, so a masked key gets exactly
    zero weight and the rest still sum to 1. (Multiplying scores by a 0/1 mask would leave a score of
    0, and exp(0) = 1 still gives the future a share of the weight.)
    """
    allowed = _combine(mask, causal, q.size(-2), k.size(-2), q.device)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, nh, Tq, Tk)
    if allowed is not None:  # a query with no allowed key gives 0/0 = NaN: make it attend to nothing
        weights = weights.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights  # (B, nh, Tq, hs), (B, nh, Tq, Tk)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fast attention through torch's fused kernel; same shapes and semantics as `naive_attention`
    (without the weights). The kernel's own `is_causal` aligns the mask top-left, which is wrong once a
    KV cache makes Tq < Tk, so we only use it for the plain square case and pass a mask otherwise."""
    t_q, t_k = q.size(-2), k.size(-2)
    if mask is None and (not causal or t_q == 1):  # one new token may see every cached one
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if mask is None and t_q == t_k:
        if _products_win(q):
            return _causal_by_products(q, k, v, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    allowed = _combine(mask, causal, t_q, t_k, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)  # (B, nh, Tq, hs)
    return out.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)  # same convention as the reference


PRODUCTS_MAX_T = 256  # up to this length, half-precision CPU attention may run as two batched products
PRODUCTS_MARGIN = 1.15  # the fused kernel must measure this much faster to be chosen
_PRODUCTS_CHOICE: dict[tuple, bool] = {}  # (shape, dtype, backward, threads) -> products win


def _products_win(q: torch.Tensor) -> bool:
    """Whether half-precision (bf16/fp16, e.g. under CPU autocast) causal attention on a CPU over at
    most `PRODUCTS_MAX_T` positions runs faster as two batched products with the scores written out
    (`_causal_by_products`) than in torch's fused kernel. Measured once per shape (forward, plus
    backward when gradients are on), because the answer depends on the CPU and the length: forward
    + backward, 2 threads, bf16, products vs fused: AMD EPYC (8, 6, 256, 64) 18 vs 30 ms and (12, 4,
    64, 32) 1.5 vs 4.8 ms (an earlier products path, with fp32 scores); Intel Xeon with AMX (8, 6,
    256, 64) 5.1-5.5 vs 11.3-12.0 ms, (12, 4, 64, 32) 0.64 vs 3.6 ms, and at T=512 a tie (35 ms),
    at T=1024 the fused kernel 2x faster. The fused kernel must be `PRODUCTS_MARGIN` faster to be
    chosen, so a near tie does not flip between runs. Never inside `torch.compile` (which fuses
    attention its own way)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16) or q.size(-2) > PRODUCTS_MAX_T:
        return False
    if torch.compiler.is_compiling():
        return False
    backward = torch.is_grad_enabled()  # off under no_grad and inference_mode alike
    key = (tuple(q.shape), q.dtype, backward, torch.get_num_threads())
    if key not in _PRODUCTS_CHOICE:
        _PRODUCTS_CHOICE[key] = _measure_products(q, backward)
    return _PRODUCTS_CHOICE[key]


def _measure_products(q: torch.Tensor, backward: bool) -> bool:
    from pocketgpt.measure import timings

    with torch.no_grad():
        q0, k0, v0, g = (torch.randn(q.shape, dtype=q.dtype, device=q.device) for _ in range(4))

    def run(attend):
        def once():
            q, k, v = (t.clone().requires_grad_(backward) for t in (q0, k0, v0))
            out = attend(q, k, v)
            if backward:
                out.backward(g)

        return once

    t = timings({  # one call alone varies by +-20% (fresh score buffers page-fault): several per round
        "products": run(lambda q, k, v: _causal_by_products(q, k, v, 0.0)),
        "fused": run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    }, rounds=5, repeat=3)
    return not t["fused"] * PRODUCTS_MARGIN < t["products"]  # a near tie keeps the products


def _causal_by_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention as `naive_attention` computes it, for half precision on CPUs (fast products
    on AVX-512 BF16 / AMX): one batched product that scales q k^T and adds the causal mask as a bias
    (-inf above the diagonal) as it writes the scores, torch's softmax over the half-precision scores
    (computed in fp32 inside, rounded once, as the fp32 softmax + cast it replaces), one batched
    product with v. No fp32 (T, T) tensor is written, forward or backward: (8, 6, 256, 64) bf16
    forward + backward 10.1-11.5 -> 5.1-5.5 ms on the Xeon, torch's fused kernel 11.3-12.0."""
    *lead, t, hs = q.shape
    bh = math.prod(lead)
    scores = torch.baddbmm(
        _causal_bias(t, q.dtype, q.device),
        q.reshape(bh, t, hs),
        k.reshape(bh, t, hs).transpose(1, 2),
        alpha=1.0 / math.sqrt(hs),
    )  # (B*nh, T, T)
    weights = torch.softmax(scores, dim=-1)  # (B*nh, T, T), in q's dtype
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.bmm(weights, v.reshape(bh, t, hs)).view(*lead, t, hs)  # (B, nh, T, hs)


_CAUSAL_BIAS: dict[tuple, torch.Tensor] = {}  # (T, dtype, device) -> (T, T): 0 where allowed, -inf above


def _causal_bias(t: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (t, dtype, device)
    if key not in _CAUSAL_BIAS:
        _CAUSAL_BIAS[key] = torch.zeros(t, t, dtype=dtype, device=device).masked_fill_(
            ~causal_mask(t, t, device), float("-inf"))
    return _CAUSAL_BIAS[key]


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, nkv, T, hs) -> (B, nkv * n_rep, T, hs): each kv head serves n_rep consecutive query heads
    (grouped-query attention, Ainslie et al. 2023; the same grouping as `transformers` Llama)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


# -- KV cache ------------------------------------------------------------------------------------
class KVCache:
    """Keys and values of every layer for the tokens seen so far, in buffers allocated once.

    Generation appends one token at a time; without a cache each step would recompute attention
    inputs for the whole prefix (O(T^2) work per sequence). `update` writes the new keys/values in
    place at `pos` and returns views of everything so far; the model calls `advance` once per forward.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, nkv, max_len, hs)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # number of positions already written

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v (B, nkv, T, hs) at positions pos..pos+T-1; return all keys/values (B, nkv, pos+T, hs)."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}; build a larger cache")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor, pos: int = 0) -> KVCache:
        """A cache over existing buffers (L, B, nkv, max_len, hs), e.g. one row of a `SlotKVCache`:
        writes land in those buffers, nothing is allocated."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.max_len, cache.pos = k, v, k.size(3), pos
        return cache


class SlotKVCache:
    """Continuous batching: `n_slots` preallocated rows, each a sequence with its *own* length.

    A plain `KVCache` has one `pos` for the whole batch, so every row must be at the same step. Here
    `lengths` (S,) holds each row's length; a decode step feeds one token per active row, writes its
    key/value at that row's own position, and attends over the buffer with a mask `j <= lengths[b]`
    (the pad-free analogue of left padding). Active rows are kept packed in slots 0..n-1 (a finished
    row is replaced by the last one, `move`), so a step works on plain views `[:n]`, never a gather.
    A prompt is prefilled through `row(i)`, a batch-1 `KVCache` view of slot i (prompts of one length
    together through `rows(i, m)`).
    """

    def __init__(self, n_layer: int, n_slots: int, n_kv_head: int, max_len: int, head_dim: int,
                 *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (n_layer, n_slots, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # (L, S, nkv, max_len, hs)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len, self.n_slots = max_len, n_slots
        self.lengths = torch.zeros(n_slots, dtype=torch.long, device=device)  # (S,) positions written per row
        self.lens = [0] * n_slots  # the same on the host, so no step waits on a device sync
        self._synced = True
        self._index: torch.Tensor | None = None  # where this step's keys go (see `write_index`)
        self._n = 0  # active rows: slots 0..n-1
        self._rows = torch.arange(n_slots, device=device)  # (S,)
        self._span = torch.arange(max_len, device=device)  # (max_len,)

    @property
    def n(self) -> int:
        """Active rows: slots 0..n-1."""
        return self._n

    @n.setter
    def n(self, value: int) -> None:
        self._n, self._index = value, None

    @property
    def pos(self) -> int:
        """The longest active row (what a context-length check needs)."""
        return max(self.lens[: self.n], default=0)

    def row(self, i: int) -> KVCache:
        """Slot i as a batch-1 `KVCache` (views, positions continue at its length)."""
        return KVCache.over(self.k[:, i : i + 1], self.v[:, i : i + 1], self.lens[i])

    def rows(self, i: int, m: int) -> KVCache:
        """Empty slots i..i+m-1 as a batch-m `KVCache` from position 0 (prefilling m prompts of one
        length in one forward)."""
        return KVCache.over(self.k[:, i : i + m], self.v[:, i : i + m], 0)

    def set_length(self, i: int, n: int) -> None:
        self.lens[i] = n
        self._synced, self._index = False, None  # the device copy is refreshed once, at the next batched step

    def positions(self) -> torch.Tensor:
        """(n, 1): where each active row's next token sits."""
        if not self._synced:
            self.lengths.copy_(torch.tensor(self.lens))
            self._synced = True
        return self.lengths[: self.n, None]

    def step_mask(self) -> torch.Tensor:
        """(n, 1, 1, Tk) bool over the first Tk = longest + 1 positions: row b sees j <= lengths[b]."""
        tk = self.pos + 1
        return (self._span[None, :tk] <= self.positions())[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new k/v per active row (n, nkv, 1, hs) at that row's length; return keys/values
        (n, nkv, Tk, hs) of the first Tk positions (rows shorter than Tk are masked by `step_mask`)."""
        n, tk = self.n, self.pos + 1
        if tk > self.max_len:
            raise ValueError(f"KV cache full: {tk} positions > max_len {self.max_len}; build a larger cache")
        at = self.write_index()  # (n * nkv,) rows of the flattened layer buffer, the same for every layer
        nkv, hs = k.size(1), k.size(3)
        self.k[layer].view(-1, hs).index_copy_(0, at, k.reshape(n * nkv, hs))  # (row, head, length[row]) <- k
        self.v[layer].view(-1, hs).index_copy_(0, at, v.reshape(n * nkv, hs))
        return self.k[layer, :n, :, :tk], self.v[layer, :n, :, :tk]

    def write_index(self) -> torch.Tensor:
        """Flat row (slot * nkv + head) * max_len + length[slot] of each active row's new key, computed
        once per step: a single index_copy_ per layer instead of a scatter through three indices."""
        if self._index is None:
            nkv = self.k.size(2)
            heads = torch.arange(nkv, device=self.k.device)  # (nkv,)
            slot_head = self._rows[: self.n, None] * nkv + heads  # (n, nkv)
            self._index = (slot_head * self.max_len + self.positions()).reshape(-1)  # (n * nkv,)
        return self._index

    def advance(self, n: int) -> None:
        if n != 1:
            raise ValueError("a SlotKVCache step feeds exactly one token per row; prefill through row(i)")
        self._synced, self._index = False, None  # `positions` refreshes the device copy when asked
        for i in range(self.n):
            self.lens[i] += 1

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src` (its filled prefix) into slot `dst`: keeps active rows packed."""
        m = self.lens[src]
        self.k[:, dst, :, :m] = self.k[:, src, :, :m]
        self.v[:, dst, :, :m] = self.v[:, src, :, :m]
        self.set_length(dst, m)


# -- modules -------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection.

    `qkv.weight` rows are [all q heads | all k heads | all v heads] ((nh + 2 nkv) * hs, C). With
    n_kv_head < n_head several query heads share a key/value head (GQA), shrinking the KV cache.
    `causal=False` gives the bidirectional attention of an encoder (BERT, the seq2seq encoder).
    Set `need_weights=True` on a call to take the reference path and keep the weights in
    `self.last_weights` (B, nh, T, Tk) for inspection.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0, *, causal: bool = True) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.layer_idx, self.causal, self.dropout = layer_idx, causal, config.dropout
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_out, bias=config.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)
        self.rope = RoPE(self.head_dim, config.rope_theta) if config.positions == "rope" else None
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, need_weights: bool = False) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `positions` (T,) or (B, T) feed RoPE; `cache` adds past keys/values."""
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.rope is not None:
            if positions is None:
                start = cache.pos if cache is not None else 0
                positions = torch.arange(start, start + T, device=x.device)  # (T,)
            q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, Tk, hs)
        k, v = repeat_kv(k, nh // nkv), repeat_kv(v, nh // nkv)  # (B, nh, Tk, hs)
        y = self._attend(q, k, v, mask, need_weights)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, nh*hs): merge the heads
        return self.resid_drop(self.proj(y))  # (B, T, C)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                need_weights: bool) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if need_weights:  # the reference path: slower, but it can show its weights
            y, self.last_weights = naive_attention(q, k, v, causal=self.causal, mask=mask, dropout_p=p)
            return y
        return sdpa_attention(q, k, v, causal=self.causal, mask=mask, dropout_p=p)


class CrossAttention(nn.Module):
    """Decoder queries attend over encoder outputs (Vaswani et al. 2017, sec. 3.2.3, "encoder-decoder
    attention"). `q` projects the decoder stream (nh heads), `kv` the encoder memory (2 * nkv heads).
    Never causal: every target position may read the whole source; `memory_mask` (B, Ts) hides source padding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.dropout = config.dropout
        self.q = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=config.bias)
        self.kv = nn.Linear(config.d_model, 2 * self.n_kv_head * self.head_dim, bias=config.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *, memory_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor:
        """x (B, Tt, C) decoder stream, memory (B, Ts, C) encoder output -> (B, Tt, C)."""
        B, Tt, _ = x.shape
        Ts = memory.size(1)
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        q = self.q(x).view(B, Tt, nh, hs).transpose(1, 2)  # (B, nh, Tt, hs)
        k, v = self.kv(memory).split(nkv * hs, dim=-1)
        k = repeat_kv(k.view(B, Ts, nkv, hs).transpose(1, 2), nh // nkv)  # (B, nh, Ts, hs)
        v = repeat_kv(v.view(B, Ts, nkv, hs).transpose(1, 2), nh // nkv)  # (B, nh, Ts, hs)
        mask = padding_mask(memory_mask) if memory_mask is not None else None  # (B, 1, 1, Ts)
        p = self.dropout if self.training else 0.0
        if need_weights:
            y, self.last_weights = naive_attention(q, k, v, causal=False, mask=mask, dropout_p=p)
        else:
            y = sdpa_attention(q, k, v, causal=False, mask=mask, dropout_p=p)  # (B, nh, Tt, hs)
        y = y.transpose(1, 2).contiguous().view(B, Tt, nh * hs)  # (B, Tt, nh*hs)
        return self.resid_drop(self.proj(y))  # (B, Tt, C)
