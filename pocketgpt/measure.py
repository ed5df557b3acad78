"""Choosing between equivalent kernels by timing them on this machine, once per process.

Which of two ways of computing the same thing is faster depends on the CPU: on our AMD EPYC box
a one-row product over row blocks read GPT-2's weights 2-3x faster than `F.linear`, on an Intel
Xeon (Sapphire Rapids class) `F.linear` was 2x faster; half-precision causal attention as two
batched products beat torch's fused kernel at 256 positions on the one and lost on the other. So
the callers (`infer/fast_decode.py`, `model/attention.py`) time the candidates on the shapes they
are about to run and cache the answer per shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def timings(candidates: dict[str, Callable[[], object]], rounds: int = 3, repeat: int = 1) -> dict[str, float]:
    """Each candidate's best time in seconds per call: one untimed call each (first touch, lazy
    packing, allocator warm-up), then `rounds` alternating timed rounds of `repeat` calls each (a
    slow spell of the machine hits every candidate, and the minimum ignores it; several calls per
    round average out the page faults and cache misses of a single one)."""
    best = dict.fromkeys(candidates, float("inf"))
    for f in candidates.values():
        f()
    for _ in range(rounds):
        for name, f in candidates.items():
            t = time.perf_counter()
            for _ in range(repeat):
                f()
            best[name] = min(best[name], (time.perf_counter() - t) / repeat)
    return best


def fastest(candidates: dict[str, Callable[[], object]], rounds: int = 3, repeat: int = 1) -> str:
    """The name of the candidate that ran fastest (see `timings`)."""
    best = timings(candidates, rounds, repeat)
    return min(best, key=best.get)
