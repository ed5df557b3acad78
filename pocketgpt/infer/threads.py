"""How many intra-op threads a decode step uses on a CPU, and when it should use fewer.

Two rules, both measured on our 2-core AMD EPYC machine shared with other jobs:

- A small model (< 20 M parameters) steps on one thread. Its step is hundreds of tiny ops; splitting
  each across threads costs a fork/join per op that the work never repays, and on a busy machine a
  thread waiting for a descheduled partner stalls the whole op (tiny preset under load: 1 thread
  650 tok/s, 2 threads 18-100 tok/s).
- A large model uses the caller's thread count (its products are memory-bound, and the second thread
  brings the second core's bandwidth) *while the machine is calm*. When other work keeps the cores
  busy (1-minute load average above cores + 1) it drops to one thread, and goes back once the load
  falls below cores - 0.5 (the gap keeps it from flapping: our own second thread adds ~1 to the load).
  Busy, two threads wait for each other at every op: GPT-2-124M at load ~10 took 380-750 ms per
  token on 2 threads and 60-90 ms on 1.

An explicit count (`Engine(threads=N)`) is always kept as given. Knows nothing of requests or layers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL_MODEL_PARAMS = 20_000_000
LOAD_CHECK_EVERY = 32  # steps between looks at the load average (it moves slowly anyway)


def step_threads(model: torch.nn.Module) -> int | None:
    """The fixed thread count for a model's steps: 1 for small models on CPU, else None (adaptive)."""
    on_cpu = model.tok_emb.weight.device.type == "cpu"
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    return 1 if on_cpu and small else None


def machine_busy(load: float, cores: int, was_busy: bool) -> bool:
    """Whether other work keeps the cores busy, with hysteresis: busy above cores + 1, calm again
    below cores - 0.5."""
    return load >= cores - 0.5 if was_busy else load > cores + 1


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


class ThreadPolicy:
    """The thread count of one engine's steps: `with policy.setting():` around a loop of steps, and
    `policy.tick()` once per step (it re-reads the load every `LOAD_CHECK_EVERY` steps)."""

    def __init__(self, model: torch.nn.Module, threads: int | None = None) -> None:
        self.fixed = threads if threads is not None else step_threads(model)
        on_cpu = model.tok_emb.weight.device.type == "cpu"
        self.adaptive = self.fixed is None and on_cpu and load_average() is not None
        self.busy = False
        self._calm = torch.get_num_threads()  # the count to return to when the machine calms down
        self._steps = 0

    @property
    def threads(self) -> int | None:
        """What steps use now; None means the caller's own setting."""
        return 1 if self.busy else self.fixed

    @contextmanager
    def setting(self) -> Iterator[None]:
        """Use `threads` inside the block (the setting is per calling thread), restoring the caller's
        afterwards. Wrap a whole loop of steps, not each step: switching costs."""
        before = torch.get_num_threads()
        self._calm = before
        if self.threads is not None and self.threads != before:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def tick(self) -> None:
        """Before a step: every `LOAD_CHECK_EVERY` steps, look at the load and switch if it says so."""
        if not self.adaptive:
            return
        self._steps += 1
        if (self._steps - 1) % LOAD_CHECK_EVERY:
            return
        busy = machine_busy(load_average() or 0.0, os.cpu_count() or 1, self.busy)
        if busy != self.busy:
            self.busy = busy
            torch.set_num_threads(1 if busy else self._calm)
