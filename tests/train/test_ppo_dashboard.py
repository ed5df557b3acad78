"""The PPO dashboard: one panel per logged metric (held-out accuracy included), none without PPO rows."""

from __future__ import annotations

import struct

from pocketgpt.train.ppo_dashboard import PANELS, plot_dashboard, read_rows


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_one_panel_per_metric_in_two_rows(tmp_path):
    train = [
        {
            "step": s,
            "reward": 0.1 * s,
            "kl": 0.01 * s,
            "entropy": 1.0,
            "clipfrac": 0.1,
            "value_loss": 0.5,
            "approx_kl": 0.01,
            "resp_len": 3.0,
            "beta": 0.05,
        }
        for s in range(1, 9)
    ]
    evals = [{"step": 4, "val_task_acc": 0.5}, {"step": 8, "val_task_acc": 0.75}]
    eight = plot_dashboard(train, tmp_path / "a.png")
    nine = plot_dashboard(train + evals, tmp_path / "b.png")
    assert len(PANELS) == 9
    (w8, h8), (w9, h9) = _png_size(eight), _png_size(nine)
    assert h8 == h9 and w9 > w8  # 2 x 4 panels, then 2 x 5 with the accuracy panel


def test_no_ppo_metrics_no_png(tmp_path):
    assert plot_dashboard([{"step": 1, "loss": 2.0}], tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_read_rows_skips_a_line_cut_by_a_kill(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "rew', encoding="utf-8")
    assert read_rows(f) == [{"step": 1, "reward": 0.5}]
