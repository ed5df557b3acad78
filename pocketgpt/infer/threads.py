"""How many intra-op threads a decode step uses on a CPU, and when it should use fewer.

- A small model (< 20 M parameters) *measures*: its step is hundreds of tiny ops, and whether a
  second thread pays depends on the CPU and on the rows. On our first 2-core machine (AMD EPYC) two
  threads gained little at one row and lost at two (tiny preset: 1 row 0.55 -> 0.49 ms, 2 rows
  0.59 -> 0.64 ms, 8 rows 1.75 -> 1.28 ms per step); on a later one (Intel, 2 MB L2 per core)
  two threads won at one row by 18%, as the 2 MB vocabulary head splits into halves that each
  core's cache holds (40 -> 14 us). So for each size of step (rows 1, 2, 3-4, 5-8, ...) the
  policy times `TRIAL_STEPS` steps on each candidate count (one, and the caller's), keeps the
  faster by median, and measures again after `RETRIAL_EVERY` steps, or at once when steps turn
  `SLOW_FACTOR` times slower than the choice measured (other work took the cores).
- A large model uses the caller's thread count (its products are memory-bound, and the second thread
  brings the second core's bandwidth).
- Either drops to one thread while other work keeps the cores busy (1-minute load average above
  cores + 1), and goes back once the load falls below cores - 0.5 (the gap keeps it from flapping:
  our own second thread adds ~1 to the load). Busy, two threads wait for each other at every op:
  GPT-2-124M at load ~10 took 380-750 ms per token on 2 threads and 60-90 ms on 1; the tiny preset
  650 tok/s on one thread and 18-100 on two.

An explicit count (`Engine(threads=N)`) is always kept as given. Knows nothing of requests or layers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL_MODEL_PARAMS = 20_000_000
LOAD_CHECK_EVERY = 32  # steps between looks at the load average (it moves slowly anyway)
TRIAL_STEPS = 6  # timed steps per candidate thread count (after one untimed: the switch's warm-up)
RETRIAL_EVERY = 4096  # steps of one size after which a small model measures its choice again
SLOW_FACTOR = 4.0  # steps this many times slower than measured, SLOW_STEPS in a row: measure again
SLOW_STEPS = 4


def is_small(model: torch.nn.Module) -> bool:
    """A CPU model small enough that a second thread may not pay for its steps (measured per step size)."""
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


def size_class(rows: int) -> int:
    """Steps of similar cost share a thread choice: rows 1 -> 0, 2 -> 1, 3-4 -> 2, 5-8 -> 3, ..."""
    return (rows - 1).bit_length()


class _Trial:
    """One step size's thread choice for a small model: samples per candidate count until each has
    `TRIAL_STEPS` timed steps, then the choice and the median it was chosen on."""

    def __init__(self) -> None:
        self.samples: dict[int, list[float]] = {}
        self.choice: int | None = None
        self.median = 0.0
        self.steps = self.slow = 0  # steps since the choice; consecutive slow ones

    def next_count(self, candidates: tuple[int, ...]) -> int:
        """The count to step on now: the choice, or the first candidate still short of samples."""
        if self.choice is not None:
            return self.choice
        return next((c for c in candidates if len(self.samples.get(c, ())) <= TRIAL_STEPS), candidates[-1])

    def add(self, count: int, seconds: float, candidates: tuple[int, ...]) -> None:
        if self.choice is None:
            if count in candidates:
                self.samples.setdefault(count, []).append(seconds)
            if all(len(self.samples.get(c, ())) > TRIAL_STEPS for c in candidates):
                medians = {c: _median(self.samples[c][1:]) for c in candidates}  # [0]: the switch's warm-up
                self.choice = min(candidates, key=lambda c: (medians[c], c))  # a tie: fewer threads
                self.median = medians[self.choice]
            return
        self.steps += 1
        self.slow = self.slow + 1 if seconds > SLOW_FACTOR * self.median else 0
        if self.steps >= RETRIAL_EVERY or self.slow >= SLOW_STEPS:
            self.__init__()  # measure again


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


class ThreadPolicy:
    """The thread count of one engine's steps: `with policy.setting():` around a loop of steps,
    `policy.tick(rows)` before each step, with the step's row count (it re-reads the load every
    `LOAD_CHECK_EVERY` steps and switches the count when the rules say so), and
    `policy.record(rows, seconds)` after a decode step (what a small model's choice is measured on)."""

    def __init__(self, model: torch.nn.Module, threads: int | None = None) -> None:
        self.fixed = threads
        self.small = threads is None and is_small(model)
        on_cpu = model.tok_emb.weight.device.type == "cpu"
        self.adaptive = threads is None and on_cpu and load_average() is not None
        self.busy = False
        self.rows = 1
        self._calm = torch.get_num_threads()  # the caller's count: what a calm machine steps on
        self._steps = 0
        self.trials: dict[int, _Trial] = {}  # a small model's choice per step size (`size_class`)

    @property
    def candidates(self) -> tuple[int, ...]:
        """The counts a small model's steps are measured on: one, and the caller's."""
        return (1,) if self._calm == 1 else (1, self._calm)

    @property
    def threads(self) -> int | None:
        """What steps use now; None means the caller's own setting."""
        if self.fixed is not None:
            return self.fixed
        if self.busy:
            return 1
        if self.small:
            return self._trial(self.rows).next_count(self.candidates)
        return None

    def _trial(self, rows: int) -> _Trial:
        key = size_class(rows)
        trial = self.trials.get(key)
        if trial is None:
            trial = self.trials[key] = _Trial()
        return trial

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

    def record(self, rows: int, seconds: float) -> None:
        """A decode step of `rows` rows took `seconds` on the current count (steps that also
        prefilled are not comparable and are not recorded)."""
        if self.small and not self.busy:
            self._trial(rows).add(torch.get_num_threads(), seconds, self.candidates)

    def _apply(self) -> None:
        want = self.threads or self._calm
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
