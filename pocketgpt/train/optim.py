"""The optimizer and the learning-rate schedule every stage shares.

AdamW (Loshchilov & Hutter 2019) with two parameter groups: matrices (>= 2-D: linear weights and
embeddings) decay, vectors (biases, norm gains) do not, because shrinking a gain or bias towards 0
only fights the normalisation (the GPT-2 / nanoGPT convention). The schedule is a pure function
of the step, so resuming needs only the step number: linear warmup (Goyal et al. 2017), then
cosine decay to `min_lr` (Loshchilov & Hutter 2017), a linear ramp down, or constant.
Knows nothing of data, losses or checkpoints.
"""

from __future__ import annotations

import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (>= 2-D) and an undecayed one (< 2-D).
    Parameters with requires_grad=False (frozen base of a LoRA model) are left out entirely."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():  # parameters() yields a tied matrix once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   device_type: str) -> torch.optim.AdamW:
    """AdamW over `param_groups` with the fused kernel (one pass over all parameters) on CUDA and CPU:
    on 2 CPU cores it measured ~3x faster than the multi-tensor `foreach` path (4L/128d: 8 vs 25 ms
    per step; 6L/384d: 75 vs 240 ms) and the per-parameter loop. Other devices get `foreach`."""
    groups = param_groups(model, weight_decay)
    if not groups:
        from pocketgpt.errors import ConfigMismatch

        raise ConfigMismatch("the model has no trainable parameters (all requires_grad=False); "
                             "unfreeze something or attach an adapter (--peft lora)")
    fast = {"fused": True} if device_type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, **fast)


def lr_at(step: int, *, lr: float, min_lr: float, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Learning rate for optimizer step `step` (0-based): warmup from lr/warmup up to lr, then decay."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))  # 0 -> 1 over the decay phase
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1.0 - progress)
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; expected cosine, linear or constant")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
