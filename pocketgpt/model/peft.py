"""Parameter-efficient fine-tuning: train a few new tensors, keep the pretrained model frozen.

Three methods, each one module swap or attachment plus one function that walks the model
(STYLE rule 15: surgery swaps modules, never subclasses the model):

  - LoRA (Hu et al. 2021): a frozen Linear W gets a trainable low-rank update,
        y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, in) ~ Kaiming, B (out, r) = 0
    so training starts exactly at the base model; `merge` folds (alpha/r) B A into W for inference
    (no extra cost per token) and `unmerge` takes it out again.
  - Prefix tuning (Li & Liang 2021): every layer gets P trainable key/value vectors per kv head that
    every query may attend to, as if P extra tokens had been seen before the input. They enter
    through the attention's `cache` argument (`_PrefixedCache`), the one place keys/values grow,
    so attention.py needs no change; a forward pre-hook widens the padding mask to match.
  - Prompt tuning (Lester et al. 2021): P trainable input embeddings ("virtual tokens", ids
    vocab_size .. vocab_size+P-1) are prepended to every input. They occupy positions 0..P-1, so
    the real tokens move to P.., exactly as if the soft prompt had been typed.

An adapter is saved as `adapter.safetensors` (only the new tensors) + `adapter.json` (method,
settings, and a hash of the base model's config) inside a model directory; loading refuses an
adapter whose base config differs. Knows nothing of data, losses or the training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch, PocketError
from pocketgpt.model.attention import SlotKVCache

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_VERSION = 1
METHODS = ("lora", "prefix", "prompt")
DEFAULT_TARGETS = ("attn.qkv", "attn.proj")


@dataclass
class PeftConfig:
    """What was attached, enough to attach it again on a fresh base model."""

    method: str  # lora | prefix | prompt
    r: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scale numerator: the update is (alpha / r) B A
    dropout: float = 0.0  # LoRA dropout on the adapter's input
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # LoRA: module name suffixes
    n_virtual: int = 16  # prefix: P keys/values per layer; prompt: P soft tokens

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PocketError(f"unknown PEFT method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.r < 1 or self.n_virtual < 1:
            raise PocketError(f"LoRA rank ({self.r}) and the number of virtual tokens ({self.n_virtual}) must be >= 1")


# == LoRA ============================================================================================
class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update (see the module docstring).

    It keeps the base's own `weight` and `bias` Parameters under the same names, so the model's
    state-dict names for the base tensors do not change; the adapter adds `lora_A` and `lora_B`.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameter objects (ties survive)
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


def apply_lora(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, *, seed: int = 0) -> list[str]:
    """Swap every nn.Linear whose name ends with one of `targets` (e.g. "attn.qkv", "mlp.fc") for a
    LoRALinear, freeze everything else, and return the swapped module names."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not names:
        linears = sorted({".".join(n.split(".")[-2:]) for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise PocketError(f"no Linear layer matches LoRA targets {list(targets)}; choose from {', '.join(linears)}")
    freeze(model)
    g = torch.Generator().manual_seed(seed)
    for name in names:
        parent, leaf = _parent(model, name)
        setattr(parent, leaf, LoRALinear(getattr(parent, leaf), r, alpha, dropout, generator=g))
    _set_peft(model, PeftConfig("lora", r=r, alpha=alpha, dropout=dropout, targets=list(targets)))
    return names


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its weight (inference at the base model's speed)."""
    for m in _loras(model):
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged LoRA update back out of its weight (training can continue)."""
    for m in _loras(model):
        m.unmerge()


def _loras(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (model.get_submodule(path) if path else model), leaf


# == prefix tuning ===================================================================================
class PrefixKV(nn.Module):
    """P trainable keys and values for one attention layer: k, v (n_kv_head, P, head_dim)."""

    def __init__(self, n_kv_head: int, n_virtual: int, head_dim: int, *, generator: torch.Generator | None = None,
                 std: float = 0.02) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.randn(n_kv_head, n_virtual, head_dim, generator=generator) * std)
        self.v = nn.Parameter(torch.randn(n_kv_head, n_virtual, head_dim, generator=generator) * std)


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


def _prefix_pre_hook(attn: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Route keys/values through the prefix and let every query see it: a padding mask
    (B, 1, 1, Tk) gains P True columns in front. The causal mask needs nothing: it aligns queries
    to the *last* keys, so a prefix sits in everyone's past."""
    prefix: PrefixKV = attn.prefix
    kwargs = dict(kwargs)
    kwargs["cache"] = _PrefixedCache(prefix, kwargs.get("cache"))
    mask = kwargs.get("mask")
    if mask is not None:
        P = prefix.k.size(1)
        kwargs["mask"] = torch.cat([mask.new_ones(*mask.shape[:-1], P), mask], dim=-1)  # (B, 1, Tq|1, P + Tk)
    return args, kwargs


def apply_prefix(model: nn.Module, n_virtual: int = 16, *, seed: int = 0) -> int:
    """Attach P = `n_virtual` trainable keys/values to every self-attention layer of a GPT; freeze
    the rest. Returns the number of layers."""
    blocks = _gpt_blocks(model, "prefix tuning")
    freeze(model)
    g = torch.Generator().manual_seed(seed)
    c = model.config
    w = model.tok_emb.weight
    for blk in blocks:
        attn = blk.attn
        attn.prefix = PrefixKV(c.n_kv_head, n_virtual, c.head_dim, generator=g).to(device=w.device, dtype=w.dtype)
        attn._prefix_hook = attn.register_forward_pre_hook(_prefix_pre_hook, with_kwargs=True)
    _set_peft(model, PeftConfig("prefix", n_virtual=n_virtual))
    return len(blocks)


@torch.no_grad()
def prefix_from_tokens(model: nn.Module, ids: torch.Tensor) -> None:
    """Set every layer's prefix to the keys/values the model computes for real tokens `ids` (P,):
    Li & Liang's initialisation from real words (and a test that prefixes are just remembered K/V)."""
    P = ids.numel()
    prefixes = [blk.attn.prefix for blk in model.blocks]
    if prefixes[0].k.size(1) != P:
        raise PocketError(f"the prefix holds {prefixes[0].k.size(1)} positions but {P} token ids were given")
    with detached(model):  # the plain base model computes the keys/values
        cache = model.new_cache(1, P)
        model(ids.view(1, P).to(model.tok_emb.weight.device), cache=cache)
    for i, prefix in enumerate(prefixes):
        prefix.k.copy_(cache.k[i, 0])  # (nkv, P, hs)
        prefix.v.copy_(cache.v[i, 0])


# == prompt tuning ===================================================================================
class SoftPromptEmbedding(nn.Module):
    """The token embedding plus P trainable rows for virtual ids V..V+P-1.

    Keeps the original `weight` Parameter (so a tied lm_head still shares it, and the vocabulary
    the head scores is unchanged); `prompt` (P, C) holds the soft tokens."""

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
    """idx (B, T) -> (B, P + T) with the virtual ids in front when `model` is prompt-tuned, else idx.
    For callers of `model.hidden(...)`, which the forward hooks do not see."""
    cfg = peft_config(model)
    if cfg is None or cfg.method != "prompt":
        return idx
    pre = virtual_ids(cfg.n_virtual, model.tok_emb.vocab_size, idx.size(0), idx.device)  # (B, P)
    return torch.cat([pre, idx], dim=1)


def _prompt_pre_hook(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Prepend the virtual ids to a fresh input (no cache, or an empty one); targets get -1 there
    (nothing to predict) and an attention mask gets 1s."""
    cache = kwargs.get("cache")
    if cache is not None and (isinstance(cache, SlotKVCache) or cache.pos > 0):
        model._prompt_added = 0  # a decode step: the soft prompt is already in the cache
        return None
    idx, rest = args[0], list(args[1:])
    emb: SoftPromptEmbedding = model.tok_emb
    P = emb.n_virtual
    pre = virtual_ids(P, emb.vocab_size, idx.size(0), idx.device)  # (B, P)
    kwargs = dict(kwargs)
    if rest and rest[0] is not None:  # targets passed positionally: model(idx, targets)
        rest[0] = torch.cat([torch.full_like(pre, -1), rest[0]], dim=1)  # (B, P + T): nothing to predict there
    elif kwargs.get("targets") is not None:
        kwargs["targets"] = torch.cat([torch.full_like(pre, -1), kwargs["targets"]], dim=1)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        kwargs["attention_mask"] = torch.cat([torch.ones_like(pre, dtype=mask.dtype), mask], dim=1)  # (B, P + Tk)
    model._prompt_added = P
    return (torch.cat([pre, idx], dim=1), *rest), kwargs


def _prompt_post_hook(model: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
    """Drop the soft prompt's positions from the logits, so callers see (B, T, V) as always."""
    P = getattr(model, "_prompt_added", 0)
    if not P or (isinstance(out, torch.Tensor) and out.dim() == 0):  # a loss: nothing to trim
        return out
    if isinstance(out, tuple):
        return (out[0][:, P:], out[1])
    return out[:, P:]


def apply_prompt(model: nn.Module, n_virtual: int = 16, *, seed: int = 0) -> None:
    """Give a GPT P = `n_virtual` trainable soft-prompt embeddings (initialised from random real
    tokens' embeddings, as Lester et al. found best) and freeze the rest."""
    _gpt_blocks(model, "prompt tuning")
    if model.config.block_size <= n_virtual:
        raise PocketError(f"{n_virtual} virtual tokens leave no room in a {model.config.block_size}-token context")
    freeze(model)
    g = torch.Generator().manual_seed(seed)
    init = torch.randint(0, model.config.vocab_size, (n_virtual,), generator=g)
    model.tok_emb = SoftPromptEmbedding(model.tok_emb, n_virtual, init_ids=init)
    model._prompt_hooks = (model.register_forward_pre_hook(_prompt_pre_hook, with_kwargs=True),
                           model.register_forward_hook(_prompt_post_hook, with_kwargs=True))
    _set_peft(model, PeftConfig("prompt", n_virtual=n_virtual))


# == shared: freezing, counting, attaching by config, removing ========================================
def freeze(model: nn.Module) -> None:
    """requires_grad=False on every parameter (the adapters added afterwards are the trainable ones)."""
    for p in model.parameters():
        p.requires_grad_(False)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, a tied matrix counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


def describe(model: nn.Module) -> str:
    """'trainable 24,576 of 1,330,944 parameters (1.85%)'."""
    trainable, total = parameter_counts(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100.0 * trainable / max(total, 1):.2f}%)"


def peft_config(model: nn.Module) -> PeftConfig | None:
    """What `apply_*` attached to this model (None for a plain model)."""
    return getattr(model, "_peft", None)


def attach(model: nn.Module, cfg: PeftConfig, *, seed: int = 0) -> nn.Module:
    """Attach the adapter that `cfg` describes (the inverse of `peft_config`)."""
    if peft_config(model) is not None:
        raise PocketError(f"the model already carries a {peft_config(model).method} adapter; load a fresh base model")
    if cfg.method == "lora":
        apply_lora(model, cfg.targets, cfg.r, cfg.alpha, cfg.dropout, seed=seed)
    elif cfg.method == "prefix":
        apply_prefix(model, cfg.n_virtual, seed=seed)
    else:
        apply_prompt(model, cfg.n_virtual, seed=seed)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter's tensors, by their names in the model."""
    cfg = peft_config(model)
    if cfg is None:
        raise PocketError("the model carries no adapter; attach one with apply_lora / apply_prefix / apply_prompt")
    keys = {"lora": (".lora_A", ".lora_B"), "prefix": (".prefix.k", ".prefix.v"), "prompt": ("tok_emb.prompt",)}
    return {n: p for n, p in model.named_parameters() if n.endswith(keys[cfg.method])}


@contextlib.contextmanager
def detached(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model is its plain base self (LoRA unmerged, no prefix, no soft prompt),
    with the base's own state-dict names: `save_model` writes a normal model directory. Restored after."""
    cfg = peft_config(model)
    if cfg is None:
        yield model
        return
    undo = _remove(model)
    try:
        yield model
    finally:
        undo()


def strip(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Remove the adapter for good: a merged LoRA stays in the weights (`merge=True`); prefix and
    prompt adapters cannot be merged and are simply dropped only when `merge=False`."""
    cfg = peft_config(model)
    if cfg is None:
        return model
    if cfg.method != "lora" and merge:
        raise PocketError(f"a {cfg.method} adapter cannot be merged into the weights; keep it attached "
                          "(load_model_with_adapter) or strip(model, merge=False) to drop it")
    if merge:
        merge_lora(model)
    _remove(model)
    return model


def _remove(model: nn.Module):
    """Detach the adapter; returns a function that puts it back exactly."""
    cfg = peft_config(model)
    del model._peft
    if cfg.method == "lora":
        swapped = []
        for name, m in list(model.named_modules()):
            if isinstance(m, LoRALinear):
                parent, leaf = _parent(model, name)
                setattr(parent, leaf, m.to_linear())
                swapped.append((parent, leaf, m))

        def undo() -> None:
            for parent, leaf, m in swapped:
                setattr(parent, leaf, m)
            model._peft = cfg
        return undo
    if cfg.method == "prefix":
        kept = [(blk.attn, blk.attn.prefix) for blk in model.blocks]
        for attn, _ in kept:
            attn._prefix_hook.remove()
            del attn.prefix

        def undo() -> None:
            for attn, prefix in kept:
                attn.prefix = prefix
                attn._prefix_hook = attn.register_forward_pre_hook(_prefix_pre_hook, with_kwargs=True)
            model._peft = cfg
        return undo
    soft: SoftPromptEmbedding = model.tok_emb
    for h in model._prompt_hooks:
        h.remove()
    emb = nn.Embedding(soft.vocab_size, soft.weight.size(1), device="meta")
    emb.weight = soft.weight
    model.tok_emb = emb

    def undo() -> None:
        model.tok_emb = soft
        model._prompt_hooks = (model.register_forward_pre_hook(_prompt_pre_hook, with_kwargs=True),
                               model.register_forward_hook(_prompt_post_hook, with_kwargs=True))
        model._peft = cfg
    return undo


def _set_peft(model: nn.Module, cfg: PeftConfig) -> None:
    object.__setattr__(model, "_peft", cfg)


def _gpt_blocks(model: nn.Module, what: str) -> nn.ModuleList:
    from pocketgpt.model.gpt import GPT

    if not isinstance(model, GPT):
        raise PocketError(f"{what} needs a decoder-only GPT; got {type(model).__name__} (use --peft lora instead)")
    return model.blocks


# == files ===========================================================================================
def config_hash(config: ModelConfig) -> str:
    """A short hash of the architecture (provenance in `extra` left out): adapters are only valid on
    a base with exactly this config."""
    d = config.to_dict()
    d.pop("extra", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save_adapter(model: nn.Module, out_dir: str | os.PathLike, *, base: str | None = None) -> Path:
    """Write adapter.safetensors (only the adapter's tensors) + adapter.json into `out_dir`."""
    from safetensors.torch import save_file

    from pocketgpt import __version__
    from pocketgpt.atomic import atomic_path, atomic_write

    cfg = peft_config(model)
    tensors = {n: t.detach().contiguous().cpu() for n, t in adapter_state(model).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "pocketgpt": __version__})
    trainable, total = parameter_counts(model)
    meta = {"adapter_version": ADAPTER_VERSION, **asdict(cfg), "base_config_hash": config_hash(model.config),
            "base": base, "adapter_params": sum(t.numel() for t in tensors.values()), "base_params": total}
    atomic_write(out / ADAPTER_CONFIG, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out


def read_adapter_config(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise ConfigMismatch(f"{model_dir}: no {ADAPTER_CONFIG}; save one with `pocketgpt sft --peft lora --out DIR`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigMismatch(f"{path}: not valid JSON ({e}); save the adapter again") from e
    if meta.get("adapter_version", 0) > ADAPTER_VERSION:
        raise ConfigMismatch(f"{path}: adapter_version {meta['adapter_version']} is newer than this pocketgpt; upgrade")
    return meta


def load_adapter(model: nn.Module, model_dir: str | os.PathLike, *, merge: bool = False) -> nn.Module:
    """Attach the adapter saved in `model_dir` to `model` (a base model built from the same config)
    and load its tensors strictly. `merge=True` folds a LoRA adapter into the weights and removes
    the wrappers (the fastest inference; not possible for prefix/prompt)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(model_dir)
    meta = read_adapter_config(d)
    want, got = meta.get("base_config_hash"), config_hash(model.config)
    if want != got:
        raise ConfigMismatch(f"{d}: this adapter was trained on a base model with config hash {want}, but the "
                             f"model has {got} (a different preset or vocabulary); load it on its own base "
                             f"model{' ' + meta['base'] if meta.get('base') else ''}")
    fields = {k: meta[k] for k in ("method", "r", "alpha", "dropout", "targets", "n_virtual") if k in meta}
    attach(model, PeftConfig(**fields))
    try:
        found = load_file(str(d / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigMismatch(f"{d / ADAPTER_WEIGHTS}: missing, corrupt or truncated ({e}); save the adapter again") from e
    expected = adapter_state(model)
    if set(found) != set(expected):
        odd = sorted(set(found) ^ set(expected))[:3]
        raise ConfigMismatch(f"{d / ADAPTER_WEIGHTS}: tensors do not match adapter.json (e.g. {odd}); save it again")
    with torch.no_grad():
        for name, t in found.items():
            if t.shape != expected[name].shape:
                raise ConfigMismatch(f"{d / ADAPTER_WEIGHTS}: {name} has shape {tuple(t.shape)}, expected "
                                     f"{tuple(expected[name].shape)}")
            expected[name].copy_(t)
    if merge and meta["method"] == "lora":
        strip(model, merge=True)
    return model


def has_adapter(model_dir: str | os.PathLike) -> bool:
    return (Path(model_dir) / ADAPTER_CONFIG).is_file()


def load_model_with_adapter(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
                            dtype: torch.dtype | None = None, merge: bool = True):
    """(model, tokenizer) from a model directory that may hold an adapter: the base weights come
    from the directory itself, or from adapter.json's `base` directory when it has no config.json."""
    from pocketgpt.model.checkpoint import CONFIG_FILE, TOKENIZER_FILES, load_model

    d = Path(model_dir)
    base = d
    if not (d / CONFIG_FILE).is_file() and has_adapter(d):
        base = Path(read_adapter_config(d).get("base") or d)
    model, tok = load_model(base, device="cpu")
    if tok is None and base != d and any((d / n).is_file() for n in TOKENIZER_FILES):
        from pocketgpt.text.bpe import Tokenizer

        tok = Tokenizer.load(d)
    if has_adapter(d):
        load_adapter(model, d, merge=merge)
    model.to(device=device, dtype=dtype).eval()
    return model, tok


def save_tuned(model: nn.Module, out_dir: str | os.PathLike, tokenizer=None, *, merge: bool = False) -> Path:
    """Write a fine-tuned model as a model directory: the base weights (config.json,
    model.safetensors, tokenizer) plus, with an adapter attached, adapter.safetensors + adapter.json.
    `merge=True` with LoRA writes the merged weights instead (a plain model, no adapter files);
    the model in memory is left as it was either way."""
    from pocketgpt.model.checkpoint import save_model

    cfg = peft_config(model)
    out = Path(out_dir)
    if cfg is None:
        return save_model(model, out, tokenizer)
    if merge and cfg.method == "lora":
        merge_lora(model)
        try:
            with detached(model):
                save_model(model, out, tokenizer)
        finally:
            unmerge_lora(model)
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            (out / name).unlink(missing_ok=True)
        return out
    with detached(model):
        save_model(model, out, tokenizer)
    return save_adapter(model, out)
