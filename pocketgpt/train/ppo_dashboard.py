"""The PPO dashboard: one PNG with a grid of the curves that say whether a PPO run is healthy.

    reward      mean score of each rollout's answers            should rise
    kl          KL(policy || reference), nats per answer        should grow slowly and stay bounded
    entropy     per-token entropy of the policy                  a collapse to 0 = mode collapse
    clipfrac    share of tokens whose ratio was clipped          high = steps too large
    value_loss  the critic's clipped squared error
    approx_kl   KL between the policy before and after a step   PPO's own step-size gauge
    resp_len    answer length in tokens                          runaway length = a hacked reward
    beta        the KL coefficient (moves with --kl-target)
    val_task_acc  greedy answers to held-out prompts, task scorers  what the run is for (at each evaluation)

Reads the rows the loop's MetricsLog wrote (train/metrics.jsonl); knows nothing of models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pocketgpt.atomic import atomic_path

PANELS = (
    ("reward", "mean reward"),
    ("kl", "KL to reference (nats/answer)"),
    ("entropy", "entropy (nats/token)"),
    ("clipfrac", "clip fraction"),
    ("value_loss", "value loss"),
    ("approx_kl", "approx KL (old -> new)"),
    ("resp_len", "answer length (tokens)"),
    ("beta", "KL coefficient beta"),
    ("val_task_acc", "held-out task accuracy (greedy)"),
)


def read_rows(metrics_jsonl: str | Path) -> list[dict[str, Any]]:
    """The JSON rows of a metrics file (a line cut by a kill is skipped)."""
    rows = []
    for line in Path(metrics_jsonl).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def plot_dashboard(rows: Sequence[dict[str, Any]], png: str | Path, *, title: str = "PPO") -> Path | None:
    """A grid of two rows, one panel per metric in PANELS that the rows carry; None when they carry none."""
    present = [(key, label) for key, label in PANELS if any(key in r for r in rows)]
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = -(-len(present) // 2)
    nrows = -(-len(present) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), dpi=80, squeeze=False)
    for ax, (key, label) in zip(axes.flat, present, strict=False):
        points = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
        sparse = len(points) < 30  # evaluations: a few points, marked
        ax.plot(*zip(*points, strict=True), lw=1.1, marker="o" if sparse else None, ms=3)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("optimizer step", fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(png)
