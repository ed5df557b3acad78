"""Parameter-efficient fine-tuning: train a few new tensors, keep the pretrained model frozen.

The hub for three methods, each in its own file (one module swap or attachment plus the functions
that walk the model, STYLE rule 15):

    LoRA            model/lora.py            y = xW^T + b + (alpha/r) x A^T B^T, B = 0 at the start; merge/unmerge
    prefix tuning   model/prefix.py          P trainable keys/values per layer, in front of the real ones
    prompt tuning   model/prompt_tuning.py   P trainable input embeddings in front of the input

This file owns what they share: `apply_*` (freeze the base, attach, record a `PeftConfig` on the
model), counting trainable parameters, `detached` / `strip` (the plain base model back), and the
files: an adapter is `adapter.safetensors` (only the new tensors) + `adapter.json` (method,
settings, a hash of the base model's config) inside a model directory; loading refuses an adapter
whose base config differs. Knows nothing of data, losses or the training loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch, PocketError
from pocketgpt.model import checkpoint
from pocketgpt.model.lora import LoRALinear, add_lora, merge_lora, remove_lora, unmerge_lora
from pocketgpt.model.prefix import PrefixKV, add_prefix, prefix_from_tokens, remove_prefix
from pocketgpt.model.prompt_tuning import (
    SoftPromptEmbedding,
    add_soft_prompt,
    prompt_as_prefix,
    remove_soft_prompt,
    with_soft_prompt,
)

__all__ = ["LoRALinear", "PrefixKV", "SoftPromptEmbedding", "PeftConfig", "apply_lora", "apply_prefix", "apply_prompt",
           "merge_lora", "unmerge_lora", "prefix_from_tokens", "with_soft_prompt", "prompt_as_prefix", "attach", "strip", "detached",
           "parameter_counts", "describe", "peft_config", "adapter_state", "save_adapter", "load_adapter",
           "load_model_with_adapter", "save_tuned", "config_hash"]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = checkpoint.ADAPTER_CONFIG  # "adapter.json", next to the weights
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


def apply_lora(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0, *, seed: int = 0) -> list[str]:
    """Freeze the model and swap every nn.Linear whose name ends with one of `targets` ("attn.qkv",
    "attn.proj", "mlp.fc", "mlp.proj", "mlp.gate") for a LoRALinear; returns the swapped names."""
    _check_bare(model)
    freeze(model)
    names = add_lora(model, targets, r, alpha, dropout, torch.Generator().manual_seed(seed))
    _set_peft(model, PeftConfig("lora", r=r, alpha=alpha, dropout=dropout, targets=list(targets)))
    return names


def apply_prefix(model: nn.Module, n_virtual: int = 16, *, seed: int = 0) -> None:
    """Freeze a GPT and give every attention layer P = `n_virtual` trainable keys/values."""
    _gpt(model, "prefix tuning")
    freeze(model)
    add_prefix(model, n_virtual, torch.Generator().manual_seed(seed))
    _set_peft(model, PeftConfig("prefix", n_virtual=n_virtual))


def apply_prompt(model: nn.Module, n_virtual: int = 16, *, seed: int = 0) -> None:
    """Freeze a GPT and give it P = `n_virtual` trainable soft-prompt embeddings."""
    _gpt(model, "prompt tuning")
    if model.config.block_size <= n_virtual:
        raise PocketError(f"{n_virtual} virtual tokens leave no room in a {model.config.block_size}-token context")
    freeze(model)
    add_soft_prompt(model, n_virtual, torch.Generator().manual_seed(seed))
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
    if peft_config(model) is None:
        yield model
        return
    undo = _remove(model)
    try:
        yield model
    finally:
        undo()


def strip(model: nn.Module, *, merge: bool = True) -> nn.Module:
    """Remove the adapter for good: a LoRA update stays in the weights with `merge=True`; prefix and
    prompt adapters cannot be merged, so they can only be dropped (`merge=False`)."""
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
    remove = {"lora": remove_lora, "prefix": remove_prefix, "prompt": remove_soft_prompt}[cfg.method]
    undo_method = remove(model)

    def undo() -> None:
        undo_method()
        _set_peft(model, cfg)
    return undo


def _set_peft(model: nn.Module, cfg: PeftConfig) -> None:
    object.__setattr__(model, "_peft", cfg)


def _check_bare(model: nn.Module) -> None:
    if peft_config(model) is not None:
        raise PocketError(f"the model already carries a {peft_config(model).method} adapter; load a fresh base model")


def _gpt(model: nn.Module, what: str) -> None:
    from pocketgpt.model.gpt import GPT

    _check_bare(model)
    if not isinstance(model, GPT):
        raise PocketError(f"{what} needs a decoder-only GPT; got {type(model).__name__} (use --peft lora instead)")


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
    and load its tensors strictly. `merge=True` gives the inference form: LoRA folded into the
    weights (plain Linear layers, the engine's fast path), a soft prompt turned into the frozen
    prefix it amounts to (`prompt_as_prefix`, so the engine sees it); a prefix stays as it is.
    A merged model can no longer save its adapter."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(model_dir)
    meta = read_adapter_config(d)
    want, got = meta.get("base_config_hash"), config_hash(model.config)
    if want != got:
        named = (f" (adapter.json names {meta['base']}: if that directory was retrained with another config, "
                 "train the adapter again)") if meta.get("base") else ""
        raise ConfigMismatch(f"{d}: this adapter was trained on a base model with config hash {want}, but the "
                             f"model has {got} (a different preset or vocabulary); load it on the base model "
                             f"it was trained on{named}")
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
    elif merge and meta["method"] == "prompt":  # its inference form: a frozen prefix the engine sees
        prompt_as_prefix(model)
        del model._peft
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
    model, tok = load_model(base, device="cpu", adapter=False)
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
