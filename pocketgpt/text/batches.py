"""Batches of (input, target) windows from token shards, resumable and split across processes.

    TokenBatches        random windows (pretraining): batch k is a pure function of (seed, k)
    SequentialBatches   consecutive windows from the start (validation: the same batches every time)

Both draw rows for the *global* batch (batch_size x world) and give rank r its slice, so one process
with batch 2b sees exactly the rows of two processes with batch b (what makes DDP runs comparable
with single-process ones). Their state is the batch counter, so resuming is exact. Targets are the
inputs shifted by one token: y[t] is the token after x[t].
Knows nothing of models or optimizers.
"""

from __future__ import annotations

import numpy as np
import torch

from pocketgpt.errors import DataError


class _Windows:
    def __init__(self, stream, batch_size: int, block_size: int, *, seed: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        if len(stream) < block_size + 1:
            raise DataError(f"{getattr(stream, 'split', 'the')} split has {len(stream)} tokens, fewer than "
                            f"block_size+1={block_size + 1}; give more text (or a larger --val-fraction for val) "
                            "or a smaller --block-size")
        if batch_size < 1 or block_size < 1:
            raise DataError(f"batch_size and block_size must be at least 1, got {batch_size} and {block_size}")
        if not 0 <= rank < world:
            raise DataError(f"rank {rank} outside a world of {world} processes")
        self.stream, self.B, self.T = stream, batch_size, block_size
        self.seed, self.rank, self.world, self.k = seed, rank, world, 0

    def _batch(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        mine = starts[self.rank * self.B:(self.rank + 1) * self.B]
        rows = np.stack([self.stream.window(int(s), self.T + 1) for s in mine])  # (B, T+1)
        xy = torch.from_numpy(rows)
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()  # (B, T) each

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        """The position: batches drawn so far (the next one is batch `step`), plus the layout it
        assumes, so a resume with another seed, batch size or world size is refused, not silently
        different."""
        return {"step": self.k, "seed": self.seed, "global_batch": self.B * self.world, "block_size": self.T}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "global_batch", "block_size"):
            if key in state and state[key] != mine[key]:
                raise DataError(f"cannot resume batches: the saved position has {key}={state[key]}, this run "
                                f"{key}={mine[key]}; resume with the settings of the saved run")
        self.k = int(state["step"])


class TokenBatches(_Windows):
    """Random windows: the k-th global batch's offsets come from a generator seeded by (seed, k)."""

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.k)
        high = len(self.stream) - self.T  # a window needs T + 1 tokens
        starts = torch.randint(0, high, (self.B * self.world,), generator=g).numpy()
        self.k += 1
        return self._batch(starts)


class SequentialBatches(_Windows):
    """Non-overlapping windows from the start, wrapping around at the end of the split."""

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_windows = max(1, (len(self.stream) - 1) // self.T)
        index = np.arange(self.B * self.world) + self.k * self.B * self.world
        self.k += 1
        return self._batch((index % n_windows) * self.T)


class ArrayStream:
    """An in-memory token stream with TokenStream's interface (tests, tiny data)."""

    def __init__(self, ids, split: str = "train") -> None:
        self.ids, self.split = np.asarray(ids, dtype=np.int64), split

    def __len__(self) -> int:
        return len(self.ids)

    def window(self, start: int, length: int) -> np.ndarray:
        return self.ids[start:start + length].copy()


def batches_from_tokens(ids, batch_size: int, block_size: int, *, seed: int = 0, rank: int = 0,
                        world: int = 1) -> TokenBatches:
    return TokenBatches(ArrayStream(ids), batch_size, block_size, seed=seed, rank=rank, world=world)
