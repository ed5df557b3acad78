"""The model directory: the one artifact every stage writes and every runner reads.

    my-model/
      config.json            ModelConfig.to_json(): what to build (versioned, human-readable)
      model.safetensors      the weights, by the contract's state-dict names (never pickle)
      pocketgpt-tokenizer.json, vocab.json, merges.txt, tokenizer.tiktoken   (optional: Tokenizer.save)
      adapter.safetensors, adapter.json                   (optional: a LoRA / prefix / prompt adapter, model/peft.py)

Loading builds the model from config.json, then loads the weights *strictly*: a missing, extra or
wrongly shaped tensor is a `ConfigMismatch` naming the tensor and both shapes, and a truncated or
corrupt weights file is one too. Every file is written atomically (`pocketgpt.atomic`), weights
first and config.json last, so a directory with a config.json was completely written once.
Knows nothing of training state (optimizer, step): that belongs to the training loop's checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from pocketgpt import __version__
from pocketgpt.atomic import atomic_path, atomic_write
from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch

if TYPE_CHECKING:
    from pocketgpt.text.bpe import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("pocketgpt-tokenizer.json", "vocab.json", "tokenizer.tiktoken")
ADAPTER_CONFIG = "adapter.json"  # model/peft.py: an adapter's settings, next to adapter.safetensors


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model of the config's architecture: GPT, Seq2Seq or BERT."""
    if config.arch == "seq2seq":
        from pocketgpt.model.seq2seq import Seq2Seq

        return Seq2Seq(config)
    if config.arch == "bert":
        from pocketgpt.model.bert import BERT

        return BERT(config)
    from pocketgpt.model.gpt import GPT

    return GPT(config)


def save_model(model: nn.Module, out_dir: str | os.PathLike, tokenizer: Tokenizer | None = None) -> Path:
    """Write `model` (which has a `.config`) and optionally its tokenizer as a model directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in unique_state_dict(model).items()}
    meta = {"format": "pt", "pocketgpt": __version__}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    if tokenizer is not None:
        tokenizer.save(out)
    atomic_write(out / CONFIG_FILE, model.config.to_json())
    return out


def load_config(model_dir: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a model directory, without touching the weights."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigMismatch(f"{model_dir}: no {CONFIG_FILE}, so not a model directory; "
                             "write one with save_model() or `pocketgpt train ... --out DIR`")
    try:
        return ModelConfig.from_json(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise ConfigMismatch(f"{path}: not a valid model config ({e}); restore it from the original directory") from e


def load_model(model_dir: str | os.PathLike, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, adapter: bool = True) -> tuple[nn.Module, Tokenizer | None]:
    """Build the model from config.json, load model.safetensors strictly, and load the tokenizer when
    tokenizer files are present. Returns (model in eval mode, tokenizer or None).
    A directory with an adapter (adapter.json, written by `pocketgpt sft --peft ...`) comes back
    with the adapter applied in its inference form (model/peft.load_model_with_adapter: LoRA merged,
    its base found through adapter.json when the directory holds only the adapter; an adapter
    trained on another base is a ConfigMismatch); adapter=False gives the base weights alone."""
    d = Path(model_dir)
    if adapter and (d / ADAPTER_CONFIG).is_file():
        from pocketgpt.model.peft import load_model_with_adapter

        return load_model_with_adapter(d, device=device, dtype=dtype)
    config = load_config(d)
    model = build_model(config)
    load_weights(model, d / WEIGHTS_FILE)
    model.to(device=device, dtype=dtype).eval()
    tokenizer = None
    if any((d / name).is_file() for name in TOKENIZER_FILES):
        from pocketgpt.text.bpe import Tokenizer

        tokenizer = Tokenizer.load(d)
    return model, tokenizer


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Strictly load a safetensors file into `model`; any disagreement is a ConfigMismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigMismatch(f"{path}: weights file missing; the model directory is incomplete")
    try:
        found = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigMismatch(f"{path}: corrupt or truncated safetensors file ({e}); save or copy the model again") from e
    check_state_dict(model, found, where=str(path))
    model.load_state_dict(found, strict=False)  # strictness checked above; tied aliases may be absent


def check_state_dict(model: nn.Module, found: dict[str, torch.Tensor], *, where: str) -> None:
    """Raise ConfigMismatch unless `found` has exactly the model's tensors with the model's shapes
    (a tied alias such as lm_head.weight may be absent)."""
    expected = model.state_dict()
    required = set(unique_state_dict(model))
    for name in sorted(required - set(found)):
        raise ConfigMismatch(f"{where}: tensor {name} missing (config expects shape {tuple(expected[name].shape)}); "
                             "was this checkpoint saved from a different config?")
    for name in sorted(set(found) - set(expected)):
        raise ConfigMismatch(f"{where}: unexpected tensor {name} with shape {tuple(found[name].shape)}; "
                             "the config does not build it (different architecture or flavour?)")
    for name, t in found.items():
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            raise ConfigMismatch(f"{where}: tensor {name} has shape {tuple(t.shape)}, config expects {want}; "
                                 "was this checkpoint trained with a different preset?")


def unique_state_dict(model: nn.Module) -> dict[str, Any]:
    """The state dict with each shared tensor once (tied lm_head.weight is dropped in favour of
    tok_emb.weight), since safetensors stores no aliases."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out
