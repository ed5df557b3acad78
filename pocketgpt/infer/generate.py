"""The simplest generation loop: prefill the prompt into a KV cache, then sample one token at a time.

Each step feeds only the newest token; the cache holds the keys/values of everything before it,
so a step costs O(T) attention instead of recomputing the whole prefix. Stops at a stop token or
when the model's context (block_size) or `max_tokens` runs out. One sequence, token ids only:
batching, streaming and stop *strings* belong to the engine built on top of this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from pocketgpt.errors import DataError
from pocketgpt.infer.sampling import sample_next


@dataclass
class Completion:
    """What a generation produced: the new token ids and why it stopped ("stop" or "length")."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_tokens: int = 0


@torch.no_grad()
def generate(model: torch.nn.Module, prompt: list[int], *, max_tokens: int = 64, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Iterable[int] = (), on_token: Callable[[int], None] | None = None) -> Completion:
    """Continue `prompt` (token ids) with up to `max_tokens` sampled tokens; a stop id ends it (and is
    not included). The same seed gives the same tokens; temperature 0 is greedy."""
    block_size = model.config.block_size
    if not prompt:
        raise DataError("the prompt is empty; give at least one token (e.g. <|endoftext|> to start fresh)")
    if len(prompt) >= block_size:
        raise DataError(f"the prompt has {len(prompt)} tokens but the model's context is {block_size}; "
                        "shorten the prompt")
    device = model.tok_emb.weight.device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()  # fresh entropy: different every run, as asked
    stop = set(stop_ids)
    out = Completion(prompt_tokens=len(prompt))
    cache = model.new_cache(1, max_len=min(block_size, len(prompt) + max_tokens))
    logits = model(torch.tensor([prompt], device=device), cache=cache)[:, -1]  # (1, V) prefill
    for _ in range(max_tokens):
        token = int(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator))
        if token in stop:
            out.finish_reason = "stop"
            break
        out.tokens.append(token)
        if on_token is not None:
            on_token(token)
        if cache.pos >= cache.max_len:  # context full: nothing more can be fed
            break
        logits = model(torch.tensor([[token]], device=device), cache=cache)[:, -1]  # (1, V)
    return out
