"""One prompt in, one completion out: the simplest door into the engine (`engine.py`).

Kept as a function because most callers (tests, the tutorials, a quick script) want exactly this;
it builds a batch-1 `Engine` and runs it to the end. Token ids only; pass a tokenizer to the Engine
directly for text, streaming and stop strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from pocketgpt.infer.engine import Completion, Engine
from pocketgpt.infer.sampling import SamplingParams

__all__ = ["Completion", "generate"]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: list[int],
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_ids: Iterable[int] = (),
    on_token: Callable[[int], None] | None = None,
    **more: object,
) -> Completion:
    """Continue `prompt` (token ids) with up to `max_tokens` sampled tokens; a stop id ends it (and is
    not included). The same seed gives the same tokens; temperature 0 is greedy. `more` takes any
    other `SamplingParams` field (min_p, repetition_penalty, logit_bias, ...)."""
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_ids=tuple(stop_ids),
        **more,
    )
    engine = Engine(model, max_batch=1, max_len=min(model.config.block_size, len(prompt) + max_tokens + 1))
    handle = engine.submit(prompt, params)
    reported = 0
    while engine.step():
        if on_token is not None:
            for token in handle.tokens[reported:]:
                on_token(token)
            reported = len(handle.tokens)
    return handle.result()
