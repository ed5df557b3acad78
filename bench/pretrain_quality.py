"""Benchmark: same data, same wall-clock budget — who reaches the lower validation loss?

Ours (pocketgpt GPT) and Hugging Face `GPT2LMHeadModel` start from identical weights (ours copied
into HF's layout by `model.hf.hf_twin`) and train through the same loop (`train/loop.py`), with the
same batches, AdamW settings, warmup and constant learning rate, for the same number of minutes
each, taken in alternating slices (a run resumed exactly through the loop's checkpoint), so load from
other processes falls on both alike. Only the model implementation differs, so the faster forward/backward does more steps in the
budget and should end lower. Both val losses are measured on the same held-out batches at the end;
both curves (val loss against wall-clock seconds) go into one PNG.

    python bench/pretrain_quality.py [--minutes 3] [--slices 6] [--preset tiny] [--png bench/pretrain_quality.png]

Ends with one JSON line; ratio = HF val loss / ours (> 1: ours lower, i.e. better).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


class Contestant:
    """One model trained through the loop in slices: `slice(minutes)` continues it (--resume) for a few
    more minutes and records (training seconds, val loss) at each evaluation."""

    def __init__(self, name: str, model: torch.nn.Module, shape: torch.nn.Module, prepared, args, out: Path,
                 forward) -> None:
        from pocketgpt.train.pretrain import pretrain_stage

        self.name, self.args, self.out = name, args, out / name
        self.stage = pretrain_stage(shape, prepared, batch_size=args.batch_size, seed=0)  # batches by our shape
        self.stage.name, self.stage.model, self.stage.loss = name, model, forward
        self.stage.save = lambda m, d: None  # the benchmark keeps no model
        self.stage.flops_per_token = None
        self.stage.evaluate = self._stamp
        self.seconds, self.slice_start, self.stamps = 0.0, 0.0, []
        self.curve: list[tuple[float, float]] = []
        self.steps, self.val_loss, self.result = 0, float("nan"), None

    def _stamp(self, model) -> dict:  # called at each eval, in order with the val rows of the log
        self.stamps.append(self.seconds + time.perf_counter() - self.slice_start)
        return {}

    @torch.no_grad()
    def final_val(self, batches: int = 40) -> float:
        """Val loss at the end on the same held-out batches for every contestant (not the last eval's)."""
        model = self.stage.model.eval()
        src = self.stage.batches("val", 0, 1)
        self.val_loss = sum(float(self.stage.loss(model, next(src))) for _ in range(batches)) / batches
        return self.val_loss

    def slice(self, minutes: float) -> None:
        from pocketgpt.train.loop import TrainConfig, train

        a = self.args
        cfg = TrainConfig(max_steps=10**9, max_minutes=minutes, batch_size=a.batch_size, lr=a.lr, warmup_steps=50,
                          schedule="constant", eval_every=a.eval_every, eval_batches=20, ckpt_every=0, log_every=50,
                          seed=0, progress=False, device="cpu")
        self.stamps, self.slice_start = [], time.perf_counter()
        res = train(self.stage, cfg, self.out, resume=self.result is not None)
        self.seconds += time.perf_counter() - self.slice_start
        vals = [r["val_loss"] for r in res.history if "val_loss" in r][-len(self.stamps):] if self.stamps else []
        self.curve += list(zip(self.stamps, vals, strict=True))
        self.result, self.steps, self.val_loss = res, res.steps, res.val_loss
        print(f"  {self.name:5s} {self.seconds:6.0f} s  step {self.steps:5d}  val loss {self.val_loss:.4f}", flush=True)


def plot(contestants: dict[str, Contestant], png: Path, title: str) -> None:
    """Each model's periodic val loss (eval batches of its own) against training seconds, and its final
    val loss on the shared batches as a star (the number the JSON line compares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, c in contestants.items():
        if c.curve:
            (line,) = ax.plot(*zip(*c.curve, strict=True), "o-", ms=3, label=name)
            ax.plot([c.seconds], [c.val_loss], "*", ms=12, color=line.get_color(),
                    label=f"{name.split(' (')[0]} final, shared batches: {c.val_loss:.3f}")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model (default 3)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--slices", type=int, default=6, help="turns per model, taken in alternation (default 6)")
    p.add_argument("--png", type=Path, default=Path("bench/pretrain_quality.png"))
    args = p.parse_args(argv)

    from pocketgpt.config import get_preset
    from pocketgpt.eval.machine import machine
    from pocketgpt.model.gpt import GPT
    from pocketgpt.model.hf import hf_twin
    from pocketgpt.train.pretrain import prepare_data

    torch.set_num_threads(2)
    config = get_preset(args.preset)
    prepared = prepare_data(None, vocab_size=config.vocab_size)
    config = config.replace(vocab_size=prepared.tokenizer.vocab_size, block_size=args.block_size, dropout=0.0)
    print("machine:", json.dumps(machine("transformers")))
    print(f"config: preset {args.preset} {config.n_layer}L/{config.n_head}H/{config.d_model}d, T={config.block_size}, "
          f"B={args.batch_size}, vocab {config.vocab_size}, lr {args.lr} constant after 50 warmup steps, "
          f"{args.minutes} min each, data: the default corpus ({prepared.shards})")
    torch.manual_seed(0)
    ours = GPT(config)
    hf = hf_twin(ours)

    def ours_loss(model, batch):
        x, y = batch
        return model(x, y)

    def hf_loss(model, batch):
        x, y = batch
        logits = model(input_ids=x).logits  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    with tempfile.TemporaryDirectory() as tmp:
        r_ours = Contestant("ours", ours, ours, prepared, args, Path(tmp), ours_loss)
        r_hf = Contestant("hf", hf, ours, prepared, args, Path(tmp), hf_loss)
        # the budget in --slices turns taken in alternation (who goes first alternates too), so a
        # neighbour that loads the machine for a while slows both alike
        for k in range(args.slices):
            for c in ((r_ours, r_hf) if k % 2 == 0 else (r_hf, r_ours)):
                c.slice(args.minutes / args.slices)
        r_ours.final_val(), r_hf.final_val()
    plot({f"pocketgpt ({r_ours.steps} steps)": r_ours, f"HF GPT2LMHeadModel ({r_hf.steps} steps)": r_hf},
         args.png, f"same data, {args.minutes:g} min each, 2 CPU threads")
    print(f"ours: {r_ours.steps} steps, val loss {r_ours.val_loss:.4f}")
    print(f"hf:   {r_hf.steps} steps, val loss {r_hf.val_loss:.4f}")
    print(f"curves: {args.png}")
    print(json.dumps({"bench": "pretrain_quality", "metric": f"val_loss_after_{args.minutes:g}_min",
                      "ours": round(r_ours.val_loss, 4), "peer": "transformers GPT2LMHeadModel, same loop",
                      "peer_value": round(r_hf.val_loss, 4), "ratio": round(r_hf.val_loss / r_ours.val_loss, 4),
                      "goal": 1.0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
