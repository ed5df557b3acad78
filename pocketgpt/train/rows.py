"""Batches drawn from a fixed list of examples (fine-tuning sets fit in memory), resumable and
split across processes.

Training batches are shuffled epochs: epoch e is a permutation drawn from a generator seeded by
(seed, e), so batch k is a pure function of (seed, k) and the state is just k. Validation batches
walk the list in order from the start. Like text/batches.py, rows are chosen for the *global*
batch (batch_size x world) and rank r takes its slice. `collate` turns the chosen examples into
tensors. Knows nothing of models or of what an example holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from pocketgpt.errors import DataError


class RowBatches:
    def __init__(self, examples: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Any], *,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if not examples:
            raise DataError("no examples to train or evaluate on; check the data file")
        self.examples, self.B, self.collate = examples, batch_size, collate
        self.shuffle, self.seed, self.rank, self.world, self.k = shuffle, seed, rank, world, 0
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) cached

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        n, G = len(self.examples), self.B * self.world
        picks = [self._index(self.k * G + j, n) for j in range(self.rank * self.B, (self.rank + 1) * self.B)]
        self.k += 1
        return self.collate([self.examples[i] for i in picks])

    def _index(self, flat: int, n: int) -> int:
        epoch, i = divmod(flat, n)
        if not self.shuffle:
            return i
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(n, generator=g))
        return int(self._order[1][i])

    def state_dict(self) -> dict:
        return {"k": self.k, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.k = int(state["k"])
