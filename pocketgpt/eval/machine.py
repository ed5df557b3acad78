"""What a measurement ran on: CPU model, cores, threads, load, library versions (benchmarks print it)."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def machine(*packages: str) -> dict:
    """Facts about this machine plus the versions of `packages` (torch always)."""
    import torch

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
           "load": round(os.getloadavg()[0], 2), "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    for name in packages:
        out[name] = version(name)
    return out


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
