"""What a run shows while it trains and leaves behind: metrics.jsonl, loss.png, the progress bar, MFU.

One JSON object per line in `metrics.jsonl` ({"step", "loss", "lr", "tokens", "tok_per_s", ...} for
training rows, {"step", "val_loss", "val_ppl", ...} for eval rows), appended as the run goes and cut
back to the checkpoint's step on resume, so a resumed run's log reads like an uninterrupted one.
The PNG is redrawn from the log at each eval and at the end. Knows nothing of models or optimizers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from pocketgpt.atomic import atomic_path

# dense bf16 peak FLOP/s by GPU name fragment (vendor data sheets); MFU is shown only when known
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12,
              "3090": 71e12, "T4": 65e12, "V100": 125e12}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s when known (GPUs by name; CPUs only via POCKETGPT_PEAK_FLOPS)."""
    import os

    if os.environ.get("POCKETGPT_PEAK_FLOPS"):
        return float(os.environ["POCKETGPT_PEAK_FLOPS"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


class MetricsLog:
    """Append-only JSONL of metric rows, with a resume cut."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path, self.enabled = Path(path), enabled
        self.rows: list[dict[str, Any]] = []
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def resume_at(self, step: int) -> None:
        """Keep only rows up to `step` (rows logged after the checkpoint belong to the lost future)."""
        if not self.enabled:
            return
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by SIGKILL
                    continue
                if row.get("step", 0) <= step:
                    self.rows.append(row)
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows), encoding="utf-8")

    def start_fresh(self) -> None:
        if self.enabled:
            self.path.write_text("", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def plot_losses(rows: list[dict[str, Any]], png: Path, title: str = "") -> Path | None:
    """Train loss (and val loss when evaluated) against steps, log-scaled when it spans a lot."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1.2, alpha=0.85)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", lw=1.6, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)


class Progress:
    """A tqdm bar over optimizer steps: loss, tokens/s, MFU and the ETA (tqdm's own)."""

    def __init__(self, total: int, start: int, *, enabled: bool, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, loss: float | None, tok_per_s: float | None, mfu: float | None) -> None:
        """One step done; `loss` is the last logged one (None before the first log)."""
        if self.bar is None:
            return
        post = {"loss": f"{loss:.4f}"} if loss is not None else {}
        if tok_per_s:
            post["tok/s"] = f"{tok_per_s:,.0f}"
        if mfu is not None:
            post["mfu"] = f"{100 * mfu:.1f}%"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
