"""The pieces a Transformer layer is made of: norms, the feed-forward network, the residual block.

    pre-LN  (GPT-2, Llama):               x = x + attn(norm1(x));  x = x + ffn(norm2(x))
    post-LN (Vaswani et al. 2017, BERT):  x = norm1(x + attn(x));  x = norm2(x + ffn(x))

Pre-LN keeps an untouched residual path from input to output, which is why deep GPTs train without
warm-up tricks (Xiong et al. 2020). Position schemes live in `positions.py` and are re-exported here.
This module knows nothing of tokens, vocabularies or losses; `gpt.py` stacks these blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.model.attention import KVCache, SelfAttention
from pocketgpt.model.positions import LearnedPositions, RoPE, sinusoidal_table

__all__ = ["LayerNorm", "RMSNorm", "make_norm", "normal_init", "FeedForward", "Block", "LearnedPositions", "RoPE",
           "sinusoidal_table"]


# -- norms ---------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim (Ba et al. 2016); bias optional."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): LayerNorm without centring or bias.
    Computed in float32 and cast back, as `transformers` Llama does, so bf16 models match it."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    """The norm the config asks for, over d_model."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return LayerNorm(config.d_model, config.norm_eps, bias=config.bias)


# -- feed-forward --------------------------------------------------------------------------------
_GELU_2C = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh_by_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, 0.5 x (1 + tanh(c (x + 0.044715 x^3))) with c = sqrt(2/pi), written with
    0.5 (1 + tanh u) = sigmoid(2u): x * sigmoid(2c (x + 0.044715 x^3)). The same function."""
    return x * torch.sigmoid(_GELU_2C * (x + 0.044715 * x * x * x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's "gelu_new". Eager: torch's kernel (one pass). Under torch.compile: the sigmoid form,
    which inductor fuses into one loop with a fast vectorised sigmoid, while its tanh is as slow as
    the eager kernel's (2 cores, forward + backward of 2048 x 1536: 2.6 ms vs 5.4 ms)."""
    if torch.compiler.is_compiling():
        return gelu_tanh_by_sigmoid(x)
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "relu": F.relu,  # the 2017 paper: FFN(x) = max(0, x W1 + b1) W2 + b2
    "gelu": F.gelu,  # exact GELU (BERT)
    "gelu_tanh": gelu_tanh,  # GPT-2's "gelu_new"
}


class FeedForward(nn.Module):
    """The position-wise MLP: C -> d_ff -> C, applied to every token independently.

    Plain: proj(act(fc(x))). SwiGLU (Shazeer 2020, used by Llama): proj(silu(gate(x)) * fc(x)), a
    gated unit whose gate decides, per hidden unit, how much of fc(x) passes.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.activation == "swiglu"
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)  # up projection
        if self.swiglu:
            self.gate = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        else:
            self.act = _ACTIVATIONS[config.activation]
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)  # down projection
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate(x)) * self.fc(x) if self.swiglu else self.act(self.fc(x))  # (B, T, d_ff)
        return self.drop(self.proj(h))  # (B, T, C)


# -- the residual block --------------------------------------------------------------------------
class Block(nn.Module):
    """One Transformer layer: self-attention then a feed-forward network (or a mixture of experts when
    `config.n_expert > 0`, as `moe`), each wrapped in a residual connection and a norm placed per
    `config.norm_placement`. `causal=False` makes an encoder layer."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0, *, causal: bool = True) -> None:
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.ln1 = make_norm(config)
        self.attn = SelfAttention(config, layer_idx, causal=causal)
        self.ln2 = make_norm(config)
        if config.n_expert > 0:
            from pocketgpt.model.moe import MoE  # lazy: moe.py itself builds on FeedForward

            self.moe = MoE(config)
        else:
            self.mlp = FeedForward(config)

    @property
    def ffn(self) -> nn.Module:
        return self.moe if hasattr(self, "moe") else self.mlp

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, need_weights: bool = False) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); the keyword arguments go to `SelfAttention`."""
        kw = dict(mask=mask, positions=positions, cache=cache, need_weights=need_weights)
        if self.pre_norm:
            x = x + self.attn(self.ln1(x), **kw)  # (B, T, C)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self.attn(x, **kw))  # post-LN: normalise after each residual sum
        return self.ln2(x + self.ffn(x))


def normal_init(module: nn.Module) -> None:
    """GPT-2 / BERT initialisation: N(0, 0.02) for every weight matrix and embedding, zero biases
    (norms keep their ones/zeros). Use as `model.apply(normal_init)`."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.Embedding, LearnedPositions)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
