"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen Linear W
gets a trainable low-rank update,

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, in) random, B (out, r) = 0

so training starts exactly at the base model. `merge` folds (alpha/r) B A into W (inference at the
base model's cost per token); `unmerge` takes it out again. One Linear replacement plus functions
that walk the model (STYLE rule 15). Freezing, bookkeeping and files are model/peft.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.errors import PocketError


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (see the module docstring).

    It keeps the base's own `weight` and `bias` Parameters under the same names, so the model's
    state-dict names for the base tensors do not change (and a tied weight stays tied); the
    adapter adds `lora_A` and `lora_B`.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameter objects
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        # A ~ U(-1/sqrt(in), 1/sqrt(in)) (nn.Linear's Kaiming-uniform bound, as the paper's code), drawn on
        # the CPU so one seed gives the same adapter on every device; B = 0 so the update starts at zero
        a = torch.empty(r, self.in_features).uniform_(-1.0, 1.0, generator=generator) / math.sqrt(self.in_features)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=w.device, dtype=w.dtype))  # (out, r)
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged:  # the update already lives in the weight
            return y
        update = self.drop(x) @ self.lora_A.t()  # (..., r): the low-rank bottleneck
        return y + self.scale * (update @ self.lora_B.t())  # (..., out)

    def delta(self) -> torch.Tensor:
        """(alpha / r) B A, shaped like the weight (out, in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear over the same weight/bias Parameters (merged or not, as they are now)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


def add_lora(model: nn.Module, targets: Sequence[str], r: int, alpha: float, dropout: float,
             generator: torch.Generator) -> list[str]:
    """Swap every nn.Linear whose name ends with one of `targets` (e.g. "attn.qkv", "mlp.fc") for a
    LoRALinear; returns the swapped names. PocketError, listing the Linear names, when none match."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not names:
        linears = sorted({".".join(n.split(".")[-2:]) for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise PocketError(f"no Linear layer matches LoRA targets {list(targets)}; choose from {', '.join(linears)}")
    for name in names:
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), r, alpha, dropout, generator=generator))
    return names


def remove_lora(model: nn.Module) -> Callable[[], None]:
    """Put plain nn.Linear layers (over the same Parameters) back; returns a function that undoes it."""
    swapped = []
    for name, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            parent, leaf = _parent(model, name)
            setattr(parent, leaf, m.to_linear())
            swapped.append((parent, leaf, m))

    def undo() -> None:
        for parent, leaf, m in swapped:
            setattr(parent, leaf, m)
    return undo


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its weight (inference at the base model's speed)."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged LoRA update back out of its weight (training can continue)."""
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf
