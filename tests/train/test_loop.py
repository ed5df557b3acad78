"""The one training loop: learning, accumulation, schedules, exact resume (Ctrl-C, SIGKILL),
refusals that protect earlier work, and DDP under torchrun matching one process."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from loop_toy import toy_stage, toy_train_config

from pocketgpt.errors import ConfigMismatch
from pocketgpt.train import state
from pocketgpt.train.loop import TrainConfig, _amp_dtype, cpu_has_bf16, train
from pocketgpt.train.optim import lr_at, param_groups

HERE = Path(__file__).resolve().parent


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_loss_goes_down_and_outputs_are_written(tmp_path):
    res = train(toy_stage(8), toy_train_config(max_steps=60, batch_size=8, ckpt_every=0, eval_every=30), tmp_path)
    assert res.stopped == "done" and res.steps == 60
    first, last = res.history[0]["loss"], res.train_loss
    assert last < first - 1.0, (first, last)  # ln(64) = 4.16 -> well below
    assert res.val_loss is not None and res.val_loss < first
    for name in ("config.json", "model.safetensors", "train/metrics.jsonl", "train/loss.png", "train/run.json",
                 "checkpoint/state.safetensors", "checkpoint/trainer.json"):
        assert (tmp_path / name).is_file(), name
    run = json.loads((tmp_path / "train" / "run.json").read_text())
    assert run["train"]["max_steps"] == 60 and run["model"]["n_layer"] == 2
    assert {"val_loss", "val_ppl"} <= set(res.history[-1])
    assert math.isclose(res.history[-1]["val_ppl"], math.exp(res.val_loss), rel_tol=1e-4)


def test_a_stage_without_a_language_model_loss_reports_no_perplexity(tmp_path, capsys):
    stage = toy_stage(8)
    stage.lm_loss = False  # e.g. reward, DPO, PPO: exp(loss) is no perplexity there
    res = train(stage, toy_train_config(max_steps=10, batch_size=8, ckpt_every=0, eval_every=10), tmp_path)
    assert "val_loss" in res.history[-1] and "val_ppl" not in res.history[-1]
    assert "perplexity" not in capsys.readouterr().err


def test_schedule_warmup_then_cosine_to_min():
    kw = dict(lr=1.0, min_lr=0.1, warmup=10, total=110)
    assert lr_at(0, **kw) == pytest.approx(0.1) and lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(100, schedule="constant", **kw) == 1.0


def test_weight_decay_only_on_matrices_and_frozen_params_left_out():
    model = toy_stage(2).model
    model.blocks[0].attn.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in (decay, no_decay) for p in g["params"]} == trainable
    assert no_decay["weight_decay"] == 0.0


class _Halves:
    """Yields the rows of another source's batches in two halves (for accumulation)."""

    def __init__(self, src):
        self.src, self.pending = src, None

    def __next__(self):
        if self.pending is None:
            x, y = next(self.src)
            self.pending = (x[4:], y[4:])
            return x[:4], y[:4]
        half, self.pending = self.pending, None
        return half

    def state_dict(self):
        return self.src.state_dict()

    def load_state_dict(self, s):
        self.src.load_state_dict(s)


def test_grad_accumulation_equals_the_bigger_batch(tmp_path):
    big = toy_stage(8)
    ref = train(big, toy_train_config(batch_size=8, max_steps=6, ckpt_every=0), tmp_path / "big")
    acc = toy_stage(8)
    make = acc.batches
    acc.batches = lambda split, rank, world: _Halves(make(split, rank, world)) if split == "train" else make(split, rank, world)
    res = train(acc, toy_train_config(batch_size=4, grad_accum=2, max_steps=6, ckpt_every=0), tmp_path / "acc")
    for step, loss in losses(tmp_path / "big").items():
        assert abs(loss - losses(tmp_path / "acc")[step]) < 1e-5
    assert abs(ref.val_loss - res.val_loss) < 1e-4
    # (weights are not compared one by one: the key bias has an exactly-zero true gradient, whose
    # rounding noise Adam normalises into O(lr) steps; the losses above are the honest comparison)


def test_ctrl_c_saves_and_resume_continues_exactly(tmp_path):
    cfg = toy_train_config(max_steps=20, ckpt_every=0)
    ref = train(toy_stage(4, dropout=0.1), cfg, tmp_path / "ref")
    calls = {"n": 0}

    def interrupt_at_step_8():
        calls["n"] += 1
        if calls["n"] == 8:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    first = train(toy_stage(4, dropout=0.1, hook=interrupt_at_step_8), cfg, tmp_path / "run")
    assert first.stopped == "interrupted" and first.steps == 8
    assert state.read_meta(tmp_path / "run" / "checkpoint")["step"] == 8
    second = train(toy_stage(4, dropout=0.1), cfg, tmp_path / "run", resume=True)
    assert second.steps == 20 and second.stopped == "done"
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")  # bitwise: the same floats, rounded the same
    assert second.val_loss == ref.val_loss


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    script = [sys.executable, str(HERE / "loop_toy.py")]
    common = ["--max-steps", "30", "--ckpt-every", "5", "--dropout", "0.1"]
    subprocess.run([*script, str(tmp_path / "ref"), *common], check=True, timeout=300)
    proc = subprocess.Popen([*script, str(tmp_path / "run"), *common, "--slow", "0.05"])
    trainer = tmp_path / "run" / "checkpoint" / "trainer.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (trainer.is_file() and json.loads(trainer.read_text())["step"] >= 10):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = state.read_meta(tmp_path / "run" / "checkpoint")["step"]
    assert 10 <= killed_at < 30, killed_at
    subprocess.run([*script, str(tmp_path / "run"), *common, "--resume"], check=True, timeout=300)
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


def test_existing_checkpoint_is_never_overwritten_without_resume(tmp_path):
    train(toy_stage(4), toy_train_config(max_steps=3), tmp_path)
    before = (tmp_path / "checkpoint" / "state.safetensors").read_bytes()
    with pytest.raises(ConfigMismatch, match="--resume"):
        train(toy_stage(4), toy_train_config(max_steps=3), tmp_path)
    assert (tmp_path / "checkpoint" / "state.safetensors").read_bytes() == before


def test_resume_refuses_another_model_config_or_changed_settings(tmp_path):
    train(toy_stage(4), toy_train_config(max_steps=3), tmp_path)
    with pytest.raises(ConfigMismatch, match="n_layer"):
        train(toy_stage(4, n_layer=3), toy_train_config(max_steps=6), tmp_path, resume=True)
    with pytest.raises(ConfigMismatch, match="lr"):
        train(toy_stage(4), toy_train_config(max_steps=6, lr=1e-2), tmp_path, resume=True)
    with pytest.raises(ConfigMismatch, match="no checkpoint"):
        train(toy_stage(4), toy_train_config(max_steps=6), tmp_path / "empty", resume=True)


def test_full_disk_on_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = toy_train_config(max_steps=10, ckpt_every=5)
    import safetensors.torch as st

    real = st.save_file
    calls = {"n": 0}

    def flaky(tensors, path, metadata=None):
        if "checkpoint.tmp" in str(path) and "rng." not in str(path):
            calls["n"] += 1
            if calls["n"] == 2:  # the second checkpoint hits a full disk half-way
                Path(path).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", flaky)
    with pytest.raises(state.DiskFull, match="previous checkpoint"):
        train(toy_stage(4), cfg, tmp_path)
    assert state.read_meta(tmp_path / "checkpoint")["step"] == 5
    assert not list(tmp_path.glob("checkpoint.tmp*"))
    monkeypatch.setattr(st, "save_file", real)
    res = train(toy_stage(4), cfg, tmp_path, resume=True)
    assert res.steps == 10


def test_a_crash_mid_swap_resumes_from_the_old_checkpoint(tmp_path):
    train(toy_stage(4), toy_train_config(max_steps=5), tmp_path)
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # as if killed between the two renames
    assert state.find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    res = train(toy_stage(4), toy_train_config(max_steps=8), tmp_path, resume=True)
    assert res.steps == 8


def test_bad_training_settings_are_named():
    with pytest.raises(ConfigMismatch, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(ConfigMismatch, match="grad_accum"):
        TrainConfig(grad_accum=0)


def _torchrun(out: Path, nproc: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
           str(HERE / "loop_toy.py"), str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    _torchrun(tmp_path / "one", 1, "--batch-size", "8", "--max-steps", "8")
    _torchrun(tmp_path / "two", 2, "--batch-size", "4", "--max-steps", "8")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == two.keys()
    for step in one:
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    w1 = state.read_meta(tmp_path / "two" / "checkpoint")
    assert len(w1["data"]) == 2  # each rank's batch position is saved


@pytest.mark.slow
def test_ddp_stop_and_resume_continues_exactly(tmp_path):
    args = ["--batch-size", "2", "--max-steps", "10", "--ckpt-every", "0", "--dropout", "0.1"]
    _torchrun(tmp_path / "ref", 2, *args)
    _torchrun(tmp_path / "run", 2, *args, "--stop-at", "4")  # SIGTERM on both ranks during step 4
    assert state.read_meta(tmp_path / "run" / "checkpoint")["step"] == 4
    _torchrun(tmp_path / "run", 2, *args, "--resume")
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


@pytest.mark.slow
def test_fsdp_two_processes_match_one_process(tmp_path):
    _torchrun(tmp_path / "one", 1, "--batch-size", "8", "--max-steps", "6")
    _torchrun(tmp_path / "fsdp", 2, "--batch-size", "4", "--max-steps", "6", "--fsdp")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert one.keys() == two.keys() and all(abs(one[s] - two[s]) < 1e-5 for s in one)
    assert (tmp_path / "fsdp" / "model.safetensors").is_file()  # a whole model was gathered and saved


def test_bf16_autocast_trains_close_to_fp32(tmp_path):
    fp32 = train(toy_stage(8), toy_train_config(max_steps=15, batch_size=8, ckpt_every=0), tmp_path / "fp32")
    bf16 = train(toy_stage(8), toy_train_config(max_steps=15, batch_size=8, ckpt_every=0, dtype="bf16"),
                 tmp_path / "bf16")
    assert bf16.train_loss < bf16.history[0]["loss"]  # it learns
    assert abs(bf16.val_loss - fp32.val_loss) < 0.1  # and lands near the fp32 run (bf16 has ~3 significant digits)


def test_auto_dtype_takes_bf16_on_a_bf16_cpu_only_for_stages_that_allow_it():
    cpu = torch.device("cpu")
    assert _amp_dtype("auto", cpu) is None  # PPO, DPO, SFT, reward: fp32 on CPUs
    assert _amp_dtype("auto", cpu, cpu_bf16=True) == (torch.bfloat16 if cpu_has_bf16() else None)  # pretrain
    assert _amp_dtype("fp32", cpu, cpu_bf16=True) is None  # asked for: obeyed
    assert _amp_dtype("bf16", cpu) == torch.bfloat16
