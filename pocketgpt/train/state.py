"""Training checkpoints: everything needed to continue a run *exactly* where it stopped.

    out_dir/checkpoint/
      state.safetensors   model tensors ("model.<name>"), AdamW moments ("optim.<param>.<key>"),
                          rank 0's RNG state ("rng.cpu", "rng.cuda")
      rng.<rank>.safetensors   the RNG state of every other rank (dropout differs per process)
      trainer.json        step, tokens seen, elapsed time, the TrainConfig and ModelConfig used,
                          every rank's batch-source position, optimizer hyper-parameters

The learning rate is a pure function of the step (optim.py), so no scheduler state is stored.
Names, not positions, key the optimizer state (torch.distributed.checkpoint's full state dicts),
so the same files load under one process, DDP or FSDP. A checkpoint is written into a temporary
directory and renamed into place, so a crash (or a full disk) mid-save leaves the previous one
whole. Knows nothing of losses or data formats: batch-source states are opaque JSON.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from pocketgpt.atomic import atomic_write
from pocketgpt.errors import ConfigMismatch, PocketError

STATE_FILE, TRAINER_FILE = "state.safetensors", "trainer.json"
FORMAT = 1
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class DiskFull(PocketError):
    """Saving ran out of space; the previous checkpoint is untouched."""


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


def collect(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flat tensors for safetensors plus the optimizer's JSON-able param groups. Collective under FSDP:
    every rank must call it."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in get_model_state_dict(model, options=FULL).items():
        if t.data_ptr() in seen:  # a tied alias (lm_head.weight): safetensors stores no aliases
            continue
        seen.add(t.data_ptr())
        tensors[f"model.{name}"] = t.detach().contiguous().cpu()
    osd = get_optimizer_state_dict(model, optimizer, options=FULL)  # full dicts reach rank 0 only
    for pname, entries in osd.get("state", {}).items():
        for key, value in entries.items():
            tensors[f"optim.{pname}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    return tensors, osd.get("param_groups", [])


def save_checkpoint(ckpt_dir: Path, tensors: dict[str, torch.Tensor], rank_rngs: list[dict[str, torch.Tensor]],
                    meta: dict[str, Any]) -> Path:
    """Write a checkpoint directory atomically (rank 0 only): temp dir, then swap it into place."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(f"{ckpt_dir.name}.tmp-{os.getpid()}")
    old = ckpt_dir.with_name(f"{ckpt_dir.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file({**tensors, **rank_rngs[0]}, str(tmp / STATE_FILE), metadata={"format": "pt"})
        for r, rng in enumerate(rank_rngs[1:], start=1):
            save_file(rng, str(tmp / f"rng.{r}.safetensors"))
        atomic_write(tmp / TRAINER_FILE, json.dumps({"format": FORMAT, **meta}, indent=1, ensure_ascii=False))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"disk full while saving the checkpoint into {ckpt_dir.parent}; the previous checkpoint "
                           f"({ckpt_dir}) is intact: free some space and run again with --resume") from e
        raise
    shutil.rmtree(old, ignore_errors=True)
    if ckpt_dir.exists():
        ckpt_dir.rename(old)
    tmp.rename(ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir


def find_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint to resume from: `checkpoint/`, or `checkpoint.old/` if a crash hit mid-swap."""
    for name in ("checkpoint", "checkpoint.old"):
        d = Path(out_dir) / name
        if (d / TRAINER_FILE).is_file() and (d / STATE_FILE).is_file():
            return d
    return None


def read_meta(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / TRAINER_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigMismatch(f"{path}: unreadable trainer state ({e}); the checkpoint is damaged") from e
    if meta.get("format", 0) > FORMAT:
        raise ConfigMismatch(f"{path}: checkpoint format {meta['format']} is newer than this pocketgpt; upgrade it")
    return meta


def restore(ckpt_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, rank: int,
            device: torch.device, param_groups: list[dict]) -> None:
    """Load model, optimizer and this rank's RNG from `ckpt_dir` (every rank calls it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / STATE_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigMismatch(f"{path}: corrupt or truncated checkpoint ({e}); "
                             f"delete {ckpt_dir} to start over, or restore it") from e
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_model_tensors(model, model_sd, where=str(path))
    set_model_state_dict(model, model_sd, options=StateDictOptions(full_state_dict=True, strict=False))
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            pname, _, field = key[len("optim."):].rpartition(".")
            state.setdefault(pname, {})[field] = value
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": param_groups}, options=FULL)
    rng = tensors if rank == 0 else load_file(str(Path(ckpt_dir) / f"rng.{rank}.safetensors"))
    set_rng_state(rng, device)


def _check_model_tensors(model: torch.nn.Module, found: dict[str, torch.Tensor], *, where: str) -> None:
    """Every tensor of the model present with its shape (tied aliases may be absent), nothing extra."""
    everywhere = StateDictOptions(full_state_dict=True)  # (FULL's cpu_offload gives rank 0 alone the tensors)
    expected = {k: tuple(v.shape) for k, v in get_model_state_dict(model, options=everywhere).items()}
    aliases = _aliases(expected, model)
    for name in sorted(set(expected) - set(found) - aliases):
        raise ConfigMismatch(f"{where}: checkpoint lacks tensor {name}; it was saved from a different model config "
                             "(train into a new --out, or pass the same preset/overrides as the original run)")
    for name in sorted(set(found) - set(expected)):
        raise ConfigMismatch(f"{where}: checkpoint has tensor {name} that this model does not build; "
                             "different architecture? pass the original run's preset/overrides")
    for name, t in found.items():
        if tuple(t.shape) != expected[name]:
            raise ConfigMismatch(f"{where}: tensor {name} has shape {tuple(t.shape)} but this model expects "
                                 f"{expected[name]}; the checkpoint is from another config")


def _aliases(expected: dict[str, tuple], model: torch.nn.Module) -> set[str]:
    seen: dict[int, str] = {}
    out = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out.add(name.removeprefix("module."))
        seen.setdefault(id(p), name)
    return out & set(expected)
