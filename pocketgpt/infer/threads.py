"""How many intra-op threads a decode step uses on a CPU, and when it should use fewer.

Three rules, all measured on our 2-core AMD EPYC machine shared with other jobs:

- A small model (< 20 M parameters) steps on one thread while the step has few rows. Its step is
  hundreds of tiny ops, each a fork/join when split; on a calm machine a second thread gains little
  (tiny preset: 1 row 0.55 -> 0.49 ms, 2 rows 0.59 -> 0.64 ms, 4 rows 1.20 -> 1.08 ms per step), and
  on a busy one a thread waiting for a descheduled partner stalls every op (tiny preset under load:
  1 thread 650 tok/s, 2 threads 18-100 tok/s).
- From `SMALL_MODEL_ROWS` rows up its ops are big enough to repay the split (8 rows: 1.75 -> 1.28
  ms per step, 37% more tokens/s), so it follows the large-model rule below.
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
SMALL_MODEL_ROWS = 6  # rows per step from which a small model's step is split across threads too
LOAD_CHECK_EVERY = 32  # steps between looks at the load average (it moves slowly anyway)


def is_small(model: torch.nn.Module) -> bool:
    """A CPU model small enough that its few-row steps run on one thread."""
    on_cpu = model.tok_emb.weight.device.type == "cpu"
    return on_cpu and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS


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
    `policy.tick(rows)` once per step, with the step's row count (it re-reads the load every
    `LOAD_CHECK_EVERY` steps and switches the count when the rules say so)."""

    def __init__(self, model: torch.nn.Module, threads: int | None = None) -> None:
        self.fixed = threads
        self.small = threads is None and is_small(model)
        on_cpu = model.tok_emb.weight.device.type == "cpu"
        self.adaptive = threads is None and on_cpu and load_average() is not None
        self.busy = False
        self.rows = 1
        self._calm = torch.get_num_threads()  # the caller's count: what a calm machine steps on
        self._steps = 0

    @property
    def threads(self) -> int | None:
        """What steps use now; None means the caller's own setting."""
        if self.fixed is not None:
            return self.fixed
        if self.busy or (self.small and self.rows < SMALL_MODEL_ROWS):
            return 1
        return None

    @contextmanager
    def setting(self) -> Iterator[None]:
        """Use `threads` inside the block (the setting is per calling thread), restoring the caller's
        afterwards. Wrap a whole loop of steps, not each step: switching costs."""
        before = torch.get_num_threads()
        self._calm = before
        self._apply()
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def tick(self, rows: int = 1) -> None:
        """Before a step of `rows` rows: every `LOAD_CHECK_EVERY` steps look at the load; switch the
        count if the load or the row count says so."""
        self.rows = rows
        if self.adaptive:
            self._steps += 1
            if not (self._steps - 1) % LOAD_CHECK_EVERY:
                self.busy = machine_busy(load_average() or 0.0, os.cpu_count() or 1, self.busy)
        self._apply()

    def _apply(self) -> None:
        want = self.threads or self._calm
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
