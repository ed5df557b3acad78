"""How big a model is: parameters by part, FLOPs per token, memory for weights and the KV cache.

Counts come from a model built on PyTorch's "meta" device (shapes, no storage), so they are exact
for every architecture and free even for large presets. The FLOP arithmetic follows Kaplan et al.
2020 (table 1) and Chowdhery et al. 2022 (PaLM, appendix B):

    forward FLOPs/token  ~ 2 N_active + 4 n_layer n_ctx d_attn     (matmuls: 2 per weight; QK^T and AV)
    training FLOPs/token ~ 3 x forward = 6 N_active + 12 n_layer n_ctx d_attn

where N_active counts the weights a token multiplies by (embedding lookups are free; the LM head is
not; a mixture of experts uses top_k of its n_expert FFNs). The attention term is for a query that
attends to the full context. Knows nothing of files beyond what `checkpoint.load_config` reads.
"""

from __future__ import annotations

from typing import Any

import torch

from pocketgpt.config import ModelConfig

PARTS = ("embeddings", "attention", "ffn", "norms", "head", "other")
BYTES = {"fp32": 4, "bf16": 2, "int8": 1}


def part_of(name: str) -> str:
    """Which part of the model a parameter name belongs to."""
    if "emb" in name:
        return "embeddings"
    if "attn" in name:
        return "attention"
    if ".mlp." in name or ".moe." in name:
        return "ffn"
    if "ln" in name or "norm" in name:
        return "norms"
    if name.startswith("lm_head"):
        return "head"
    return "other"


def param_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters by part, plus `total` and `non_embedding`; a tied matrix counts once (as embeddings)."""
    from pocketgpt.model.checkpoint import build_model

    with torch.device("meta"):
        model = build_model(config)
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        counts[part_of(name)] += p.numel()
    counts["total"] = sum(counts[p] for p in PARTS)
    counts["non_embedding"] = counts["total"] - counts["embeddings"]
    return counts


def flops_per_token(config: ModelConfig, counts: dict[str, int], context: int) -> dict[str, int]:
    """Forward and training FLOPs for one token at `context` positions of attention."""
    ffn = counts["ffn"]
    if config.n_expert > 0:  # only top_k experts run per token
        ffn = ffn * config.moe_top_k // config.n_expert
    head = config.vocab_size * config.d_model  # tied or not, the head matmul is done
    active = counts["attention"] + ffn + head
    d_attn = config.n_head * config.head_dim
    attention = 4 * config.n_layer * context * d_attn
    forward = 2 * active + attention
    return {"active_params": active, "forward": forward, "attention_term": attention, "training": 3 * forward}


def kv_cache_bytes(config: ModelConfig, context: int, bytes_per_value: int) -> int:
    """Keys + values for every layer at `context` positions, one sequence."""
    return 2 * config.n_layer * config.n_kv_head * config.head_dim * context * bytes_per_value


def model_info(config: ModelConfig, context: int | None = None) -> dict[str, Any]:
    """Everything `pocketgpt model info` shows, as plain data."""
    context = context or config.block_size
    counts = param_counts(config)
    return {
        "config": {k: getattr(config, k) for k in ("arch", "vocab_size", "block_size", "n_layer", "n_head",
                                                   "n_kv_head", "d_model", "d_ff", "head_dim", "positions",
                                                   "norm", "activation", "n_expert")},
        "flavour": config.flavour,
        "params": counts,
        "context": context,
        "flops_per_token": flops_per_token(config, counts, context),
        "weights_bytes": {k: counts["total"] * b for k, b in BYTES.items()},
        "kv_cache_bytes": {k: kv_cache_bytes(config, context, b) for k, b in BYTES.items() if k != "int8"},
    }


def human_count(n: float) -> str:
    """12345678 -> '12.3M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
