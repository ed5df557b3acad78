"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
P trainable input embeddings ("soft tokens") are prepended to every input.

They are *virtual token ids* V..V+P-1 (V = vocab_size): `SoftPromptEmbedding` replaces `tok_emb`,
looking real ids up in the frozen table and virtual ids in `prompt` (P, C). A forward pre-hook on
the GPT prepends the virtual ids to a fresh input (targets get -1, a padding mask gets 1s) and a
forward hook drops their P positions from the logits. So the real tokens sit at positions P..,
exactly as if the soft prompt had been typed, and the prompt takes P positions of the context.
Callers of `model.hidden(...)` (which hooks do not see) use `with_soft_prompt`; for generation,
`prompt_as_prefix` turns the soft prompt into what a KV cache would hold after reading it (frozen
keys/values per layer, model/prefix.py) with the real tokens' positions moved by P. Freezing,
bookkeeping and files are model/peft.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.model.attention import SlotKVCache


class SoftPromptEmbedding(nn.Module):
    """The token embedding plus P trainable rows for virtual ids V..V+P-1. Keeps the original
    `weight` Parameter (a tied lm_head still shares it; the head still scores V real tokens)."""

    def __init__(self, emb: nn.Embedding, n_virtual: int, *, init_ids: torch.Tensor) -> None:
        super().__init__()
        self.weight = emb.weight  # (V, C), frozen
        self.vocab_size = emb.weight.size(0)
        self.prompt = nn.Parameter(emb.weight.detach()[init_ids.to(emb.weight.device)].clone())  # (P, C)
        self.n_virtual = n_virtual

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        V = self.vocab_size
        x = F.embedding(idx.clamp(max=V - 1), self.weight)  # (B, T, C)
        virtual = idx >= V  # (B, T)
        if not virtual.any():
            return x
        soft = self.prompt[(idx - V).clamp(0, self.n_virtual - 1)]  # (B, T, C)
        return torch.where(virtual[..., None], soft.to(x.dtype), x)


def virtual_ids(n_virtual: int, vocab_size: int, batch: int, device: torch.device | str) -> torch.Tensor:
    """(B, P) ids of the soft prompt: vocab_size .. vocab_size + P - 1 in every row."""
    return torch.arange(vocab_size, vocab_size + n_virtual, device=device).expand(batch, -1)


def with_soft_prompt(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """idx (B, T) -> (B, P + T) with the virtual ids in front when `model` has a soft prompt, else idx."""
    emb = getattr(model, "tok_emb", None)
    if not isinstance(emb, SoftPromptEmbedding):
        return idx
    return torch.cat([virtual_ids(emb.n_virtual, emb.vocab_size, idx.size(0), idx.device), idx], dim=1)


def _pre_hook(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Prepend the virtual ids to a fresh input (no cache, or an empty one)."""
    cache = kwargs.get("cache")
    if cache is not None and (isinstance(cache, SlotKVCache) or cache.pos > 0):
        model._prompt_added = 0  # a decode step: the soft prompt is already in the cache
        return None
    idx, rest = args[0], list(args[1:])
    emb: SoftPromptEmbedding = model.tok_emb
    pre = virtual_ids(emb.n_virtual, emb.vocab_size, idx.size(0), idx.device)  # (B, P)
    kwargs = dict(kwargs)
    if rest and rest[0] is not None:  # targets passed positionally: model(idx, targets)
        rest[0] = torch.cat([torch.full_like(pre, -1), rest[0]], dim=1)  # (B, P + T): nothing to predict there
    elif kwargs.get("targets") is not None:
        kwargs["targets"] = torch.cat([torch.full_like(pre, -1), kwargs["targets"]], dim=1)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        kwargs["attention_mask"] = torch.cat([torch.ones_like(pre, dtype=mask.dtype), mask], dim=1)  # (B, P + Tk)
    model._prompt_added = emb.n_virtual
    return (torch.cat([pre, idx], dim=1), *rest), kwargs


def _post_hook(model: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
    """Drop the soft prompt's positions from the logits, so callers see (B, T, V) as always."""
    P = getattr(model, "_prompt_added", 0)
    if not P or (isinstance(out, torch.Tensor) and out.dim() == 0):  # a loss: nothing to trim
        return out
    if isinstance(out, tuple):
        return (out[0][:, P:], out[1])
    return out[:, P:]


def _hook(model: nn.Module) -> None:
    model._prompt_hooks = (model.register_forward_pre_hook(_pre_hook, with_kwargs=True),
                           model.register_forward_hook(_post_hook, with_kwargs=True))


def add_soft_prompt(model: nn.Module, n_virtual: int, generator: torch.Generator) -> None:
    """Replace a GPT's tok_emb with a SoftPromptEmbedding whose P rows start as the embeddings of
    random real tokens (Lester et al. found vocabulary initialisation best)."""
    init = torch.randint(0, model.config.vocab_size, (n_virtual,), generator=generator)
    model.tok_emb = SoftPromptEmbedding(model.tok_emb, n_virtual, init_ids=init)
    _hook(model)


def remove_soft_prompt(model: nn.Module) -> Callable[[], None]:
    """Put a plain nn.Embedding (same weight) back; returns a function that restores the soft prompt."""
    soft: SoftPromptEmbedding = model.tok_emb
    for h in model._prompt_hooks:
        h.remove()
    emb = nn.Embedding(soft.vocab_size, soft.weight.size(1), device="meta")
    emb.weight = soft.weight
    model.tok_emb = emb

    def undo() -> None:
        model.tok_emb = soft
        _hook(model)
    return undo


@torch.no_grad()
def prompt_as_prefix(model: nn.Module) -> None:
    """The inference form of a soft prompt: run it through the model once (positions 0..P-1), keep
    every layer's keys/values as a frozen prefix, and move the real tokens' positions by P. Outputs
    are unchanged, and code that calls `model.hidden` (the engine) now sees the prompt too."""
    from pocketgpt.errors import PocketError
    from pocketgpt.model.prefix import add_fixed_prefix

    soft: SoftPromptEmbedding = model.tok_emb
    if model.config.positions == "sinusoidal":
        raise PocketError("prompt_as_prefix needs learned, RoPE or no positions (sinusoidal ones are a fixed table)")
    P, dev = soft.n_virtual, soft.weight.device
    cache = model.new_cache(1, P)
    model.hidden(virtual_ids(P, soft.vocab_size, 1, dev), cache=cache)  # hidden(): the hooks stay out of it
    remove_soft_prompt(model)
    add_fixed_prefix(model, [(cache.k[i, 0].clone(), cache.v[i, 0].clone()) for i in range(len(model.blocks))], P)
