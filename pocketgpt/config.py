"""Model configuration as data: one dataclass, named presets, JSON round trip.

Every model directory stores the `ModelConfig` it was built with (`config.json`); loading builds
the model from it and then loads weights strictly. Knows nothing of tensors or training.

The same `GPT` class serves two flavours, chosen by fields rather than subclasses:
  - "gpt2":  learned positions, LayerNorm, GELU (tanh approx.), biases, tied embeddings
  - "llama": RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention (n_kv_head < n_head)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pocketgpt.errors import ConfigMismatch

CONFIG_VERSION = 1

CHOICES = {
    "arch": ("gpt", "seq2seq", "bert"),
    "activation": ("relu", "gelu", "gelu_tanh", "swiglu"),
    "norm": ("layernorm", "rmsnorm"),
    "norm_placement": ("pre", "post"),
    "positions": ("learned", "sinusoidal", "rope", "none"),
}


@dataclass
class ModelConfig:
    """Shape and flavour of a Transformer. Defaults are GPT-2 small (124M)."""

    arch: str = "gpt"  # gpt (decoder-only) | seq2seq (encoder-decoder) | bert (encoder-only)
    vocab_size: int = 50257
    block_size: int = 1024  # longest context the model is built for
    n_layer: int = 12  # decoder layers (gpt, seq2seq) or encoder layers (bert)
    n_encoder_layer: int = 0  # seq2seq only
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention; None = n_head (plain multi-head)
    d_model: int = 768
    d_ff: int | None = None  # None = 4 * d_model
    head_dim: int | None = None  # None = d_model // n_head
    activation: str = "gelu_tanh"  # GPT-2 uses the tanh approximation of GELU
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # pre-LN (GPT-2) or post-LN (Vaswani et al. 2017)
    positions: str = "learned"
    rope_theta: float = 10000.0
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    # mixture of experts: n_expert > 0 replaces every FFN with a routed set of experts
    n_expert: int = 0
    moe_top_k: int = 2
    moe_capacity_factor: float = 1.25
    moe_aux_weight: float = 0.01
    # special token ids the model needs to know about (padding, BOS/EOS, BERT's mask); -1 = none
    pad_id: int = -1
    bos_id: int = -1
    eos_id: int = -1
    mask_id: int = -1
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (e.g. imported from)

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigMismatch(f"config {name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.head_dim is None:
            if self.d_model % self.n_head:
                raise ConfigMismatch(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
            self.head_dim = self.d_model // self.n_head
        if self.n_head % self.n_kv_head:
            raise ConfigMismatch(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")

    @property
    def flavour(self) -> str:
        """'llama' when built from RoPE + RMSNorm + SwiGLU, else 'gpt2'-like."""
        return "llama" if (self.positions, self.norm, self.activation) == ("rope", "rmsnorm", "swiglu") else "gpt2"

    # -- JSON round trip ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        version = d.pop("config_version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise ConfigMismatch(f"config_version {version} is newer than this pocketgpt ({CONFIG_VERSION}); upgrade pocketgpt")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigMismatch(f"unknown config field(s) {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (derived fields recomputed unless given)."""
        d = dataclasses.asdict(self)
        # a derived field that still holds its derived value follows its sources; one set explicitly stays
        derived = {"n_kv_head": self.n_head, "d_ff": 4 * self.d_model, "head_dim": self.d_model // self.n_head}
        for name, value in derived.items():
            if name not in changes and d[name] == value:
                d[name] = None
        d.update(changes)
        return ModelConfig(**d)


def _llama(**kw: Any) -> ModelConfig:
    base = dict(positions="rope", norm="rmsnorm", activation="swiglu", bias=False, norm_eps=1e-5)
    return ModelConfig(**{**base, **kw})


PRESETS: dict[str, ModelConfig] = {
    # ~1-2M params: trains to recognisable text in minutes on 2 CPU cores
    "tiny": ModelConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, d_model=128),
    # ~10-20M params
    "small": ModelConfig(vocab_size=8192, block_size=512, n_layer=6, n_head=6, d_model=384),
    "gpt2-124m": ModelConfig(),
    "tiny-llama": _llama(vocab_size=4096, block_size=256, n_layer=4, n_head=4, n_kv_head=2, d_model=128, d_ff=344),
    # the original Transformer base model (Vaswani et al. 2017, table 3)
    "transformer-base": ModelConfig(
        arch="seq2seq", vocab_size=37000, block_size=512, n_layer=6, n_encoder_layer=6, n_head=8, d_model=512,
        d_ff=2048, activation="relu", norm_placement="post", positions="sinusoidal", dropout=0.1,
    ),
    "bert-mini": ModelConfig(
        arch="bert", vocab_size=30522, block_size=512, n_layer=4, n_head=4, d_model=256, activation="gelu",
        norm_placement="post", tie_embeddings=True,
    ),
    "tiny-moe": ModelConfig(vocab_size=4096, block_size=256, n_layer=4, n_head=4, d_model=128, n_expert=4, moe_top_k=2),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset; unknown names list the known ones."""
    if name not in PRESETS:
        raise ConfigMismatch(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], extra=dict(PRESETS[name].extra))
