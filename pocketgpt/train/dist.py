"""Distributed training under `torchrun --nproc_per_node=N`: one process per device.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we then start a process group (gloo on CPU, nccl on
GPU) and wrap the model in DistributedDataParallel, which averages gradients across processes in
the backward pass, or in FSDP (`fully_shard`), which also shards parameters, gradients and optimizer
state so a model that does not fit one device still trains. Without torchrun everything here is a
no-op and the world has one process. Knows nothing of losses, data or files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this process's GPU when CUDA is available, else the CPU."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        from pocketgpt.errors import ConfigMismatch

        raise ConfigMismatch(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_world(device_spec: str = "auto") -> World:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec, local_rank)
    if size > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank, size, local_rank, device)


def close_world(world: World) -> None:
    if world.distributed and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def wrap_model(model: torch.nn.Module, world: World, *, fsdp: bool = False) -> torch.nn.Module:
    """DDP (or FSDP with `fsdp=True`) around `model` when there is more than one process."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        if not world.distributed:
            return model  # sharding over one process is just the model
        for block in getattr(model, "blocks", []):  # shard per block, then the rest (embeddings, head)
            fully_shard(block)
        fully_shard(model)
        return model
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def mean_across(value: float | torch.Tensor, world: World) -> float:
    """The mean of a scalar over all processes (the loss every rank logs)."""
    t = torch.as_tensor(value, dtype=torch.float64, device=world.device if world.device.type == "cuda" else "cpu")
    if world.distributed:
        tdist.all_reduce(t)
        t = t / world.size
    return float(t)


def any_across(flag: bool, world: World) -> bool:
    """True on every process when it is True on any (so all stop at the same step)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=world.device if world.device.type == "cuda" else "cpu")
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: object, world: World) -> list:
    """Every rank's `obj` (JSON-able), in rank order."""
    if not world.distributed:
        return [obj]
    out: list = [None] * world.size
    tdist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        tdist.barrier()
