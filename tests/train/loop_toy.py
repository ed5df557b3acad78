"""A toy stage for the training-loop tests: a 2-layer GPT learning a repeating token pattern.

Importable by the tests and runnable as a script (the SIGKILL and torchrun tests start it as its
own process): `python loop_toy.py OUT --max-steps 20 --batch-size 4 [--resume] [--grad-accum 2]`.
The batch source follows the same rule as text/batches.py: batch k's offsets are drawn for the
global batch (batch_size x world) from a generator seeded by (seed, k); rank r takes its slice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pocketgpt.config import get_preset  # noqa: E402
from pocketgpt.model.checkpoint import save_model  # noqa: E402
from pocketgpt.model.gpt import GPT  # noqa: E402
from pocketgpt.train.loop import Stage, TrainConfig, train  # noqa: E402

V, T = 64, 16


def tokens(n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    motif = torch.randint(0, V, (37,), generator=g)
    noise = torch.randint(0, V, (n,), generator=g)
    seq = motif.repeat(n // 37 + 1)[:n]
    return torch.where(torch.rand(n, generator=g) < 0.1, noise, seq)  # a pattern with 10% noise


class Windows:
    def __init__(self, data: torch.Tensor, batch_size: int, seed: int, rank: int, world: int, sequential=False):
        self.data, self.B, self.seed, self.rank, self.world, self.k = data, batch_size, seed, rank, world, 0
        self.sequential = sequential

    def __next__(self):
        if self.sequential:
            starts = (torch.arange(self.B * self.world) + self.k * self.B * self.world) * T % (len(self.data) - T - 1)
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.k)
            starts = torch.randint(0, len(self.data) - T - 1, (self.B * self.world,), generator=g)
        self.k += 1
        starts = starts[self.rank * self.B:(self.rank + 1) * self.B]
        x = torch.stack([self.data[s:s + T] for s in starts.tolist()])
        y = torch.stack([self.data[s + 1:s + T + 1] for s in starts.tolist()])
        return x, y

    def state_dict(self) -> dict:
        return {"k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = state["k"]


def toy_config(n_layer: int = 2, dropout: float = 0.0):
    return get_preset("tiny").replace(vocab_size=V, block_size=T, n_layer=n_layer, n_head=2, d_model=32,
                                      dropout=dropout)


def toy_stage(batch_size: int, *, seed: int = 0, n_layer: int = 2, dropout: float = 0.0, hook=None) -> Stage:
    torch.manual_seed(seed)
    model = GPT(toy_config(n_layer, dropout))
    data = tokens()
    train_data, val_data = data[:3500], data[3500:]

    def batches(split, rank, world):
        return Windows(train_data if split == "train" else val_data, batch_size, seed, rank, world,
                       sequential=split == "val")

    def loss(model, batch):
        if hook is not None:
            hook()
        x, y = batch
        return model(x, y)

    return Stage("toy", model, batches, loss, lambda m, out: save_model(m, out), tokens_per_row=T)


def toy_train_config(**kw) -> TrainConfig:
    base = dict(max_steps=20, batch_size=4, lr=3e-3, warmup_steps=3, eval_every=10, eval_batches=2,
                ckpt_every=5, log_every=1, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--slow", type=float, default=0.0, help="sleep per micro-batch (so a test can kill mid-run)")
    p.add_argument("--stop-at", type=int, default=0, help="send ourselves SIGTERM during this micro-batch")
    a = p.parse_args(argv)
    calls = [0]

    def hook():
        import os
        import signal
        import time

        calls[0] += 1
        time.sleep(a.slow)
        if calls[0] == a.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    stage = toy_stage(a.batch_size, dropout=a.dropout, hook=hook)
    cfg = toy_train_config(max_steps=a.max_steps, batch_size=a.batch_size, grad_accum=a.grad_accum,
                           ckpt_every=a.ckpt_every, fsdp=a.fsdp, device="cpu")
    train(stage, cfg, a.out, resume=a.resume)


if __name__ == "__main__":
    main()
