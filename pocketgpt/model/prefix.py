"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"):
every attention layer gets P trainable key/value vectors per kv head that every query may attend
to, as if P extra tokens had been seen before the input, at every layer.

They enter through the attention's `cache` argument, the one place keys/values grow: a forward
pre-hook on each `SelfAttention` hands it a `_PrefixedCache` that puts the prefix in front of
whatever the real cache (or none, in training) returns, and widens a padding mask by P columns.
The causal mask aligns queries to the *last* keys, so the prefix sits in every token's past with
no change to attention.py. Positions are not shifted (the prefix has none). Freezing, bookkeeping
and files are model/peft.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


class PrefixKV(nn.Module):
    """P trainable keys and values for one attention layer: k, v (n_kv_head, P, head_dim)."""

    def __init__(self, n_kv_head: int, n_virtual: int, head_dim: int, *, generator: torch.Generator | None = None,
                 std: float = 0.02) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.randn(n_kv_head, n_virtual, head_dim, generator=generator) * std)
        self.v = nn.Parameter(torch.randn(n_kv_head, n_virtual, head_dim, generator=generator) * std)
        self.shift = 0  # > 0 only for a soft prompt in its inference form (prompt_tuning.prompt_as_prefix)


class _PrefixedCache:
    """Stands in for the attention's `cache` argument: whatever the real cache (or none) returns,
    the trained prefix keys/values go in front. SelfAttention only calls `update` and reads `pos`."""

    def __init__(self, prefix: PrefixKV, inner: Any) -> None:
        self.prefix, self.inner = prefix, inner

    @property
    def pos(self) -> int:
        return self.inner.pos if self.inner is not None else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inner is not None:
            k, v = self.inner.update(layer, k, v)  # (B, nkv, Tk, hs): cached + new
        B = k.size(0)
        pk = self.prefix.k.to(k.dtype).expand(B, -1, -1, -1)  # (B, nkv, P, hs)
        pv = self.prefix.v.to(v.dtype).expand(B, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)  # (B, nkv, P + Tk, hs)


def _pre_hook(attn: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Route keys/values through the prefix; a padding mask (B, 1, 1, Tk) gains P True columns in front."""
    kwargs = dict(kwargs)
    kwargs["cache"] = _PrefixedCache(attn.prefix, kwargs.get("cache"))
    if attn.prefix.shift and kwargs.get("positions") is not None:  # RoPE: real tokens sit after the prefix
        kwargs["positions"] = kwargs["positions"] + attn.prefix.shift
    mask = kwargs.get("mask")
    if mask is not None:
        P = attn.prefix.k.size(1)
        kwargs["mask"] = torch.cat([mask.new_ones(*mask.shape[:-1], P), mask], dim=-1)  # (B, 1, Tq|1, P + Tk)
    return args, kwargs


def _hook(attn: nn.Module) -> None:
    attn._prefix_hook = attn.register_forward_pre_hook(_pre_hook, with_kwargs=True)


def add_prefix(model: nn.Module, n_virtual: int, generator: torch.Generator) -> None:
    """Give every self-attention layer of a GPT its own trainable PrefixKV (as `blk.attn.prefix`)."""
    c, w = model.config, model.tok_emb.weight
    for blk in model.blocks:
        blk.attn.prefix = PrefixKV(c.n_kv_head, n_virtual, c.head_dim, generator=generator).to(w.device, w.dtype)
        _hook(blk.attn)


@torch.no_grad()
def add_fixed_prefix(model: nn.Module, kv: list[tuple[torch.Tensor, torch.Tensor]], shift: int) -> None:
    """Attach frozen prefixes with given keys/values (nkv, P, hs) per layer whose positions the real
    tokens follow: RoPE positions and learned position lookups move by `shift`."""
    c = model.config
    for blk, (k, v) in zip(model.blocks, kv, strict=True):
        prefix = PrefixKV(c.n_kv_head, k.size(1), c.head_dim).to(k.device, k.dtype).requires_grad_(False)
        prefix.k.copy_(k)
        prefix.v.copy_(v)
        prefix.shift = shift
        blk.attn.prefix = prefix
        _hook(blk.attn)
    if c.positions == "learned":
        model.pos_emb.register_forward_pre_hook(lambda mod, args: (args[0] + shift,))


def remove_prefix(model: nn.Module) -> Callable[[], None]:
    """Take the prefixes off (the plain base model); returns a function that puts them back."""
    kept = [(blk.attn, blk.attn.prefix) for blk in model.blocks]
    for attn, _ in kept:
        attn._prefix_hook.remove()
        del attn.prefix

    def undo() -> None:
        for attn, prefix in kept:
            attn.prefix = prefix
            _hook(attn)
    return undo


@torch.no_grad()
def prefix_from_tokens(model: nn.Module, ids: torch.Tensor) -> None:
    """Set every layer's prefix to the keys/values the base model computes for real tokens `ids`
    (P,): Li & Liang's initialisation from real words (and the test that a prefix is remembered K/V)."""
    from pocketgpt.errors import PocketError

    P = ids.numel()
    prefixes = [blk.attn.prefix for blk in model.blocks]
    if prefixes[0].k.size(1) != P:
        raise PocketError(f"the prefix holds {prefixes[0].k.size(1)} positions but {P} token ids were given")
    undo = remove_prefix(model)  # the plain base model computes the keys/values
    try:
        cache = model.new_cache(1, P)
        model(ids.view(1, P).to(model.tok_emb.weight.device), cache=cache)
    finally:
        undo()
    for i, prefix in enumerate(prefixes):
        prefix.k.copy_(cache.k[i, 0])  # (nkv, P, hs)
        prefix.v.copy_(cache.v[i, 0])
