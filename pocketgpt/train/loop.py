"""THE training loop: every stage (pretrain, finetune, SFT, reward, PPO, DPO) runs through `train()`.

A stage supplies what differs: a model, a factory of resumable batch sources, a loss, and how to
save the result (`Stage`). The loop owns what is the same everywhere:

    for step in range(start, max_steps):
        for each of grad_accum micro-batches:  loss = stage.loss(model, batch); (loss / accum).backward()
        clip the gradient norm; set lr = schedule(step); optimizer.step(); zero the gradients
        every log_every: metrics row + progress bar   every eval_every: val loss, perplexity, PNG
        every ckpt_every: checkpoint (model + optimizer + RNG + data position), atomically

Exact resume: the schedule is a function of the step, the batch sources resume from their saved
position, and the RNG states are restored, so a run killed (even by SIGKILL) and resumed with
`resume=True` produces the same losses as one that never stopped (bitwise on CPU). Ctrl-C (SIGINT)
or SIGTERM finishes the current step, saves a checkpoint and returns; a second Ctrl-C aborts.
Under `torchrun` the same call trains with DDP (or FSDP) and every process stops at the same step.
Knows nothing of tokens, text or files beyond its own `out_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from pocketgpt.atomic import atomic_write
from pocketgpt.errors import ConfigMismatch
from pocketgpt.train import dist, state
from pocketgpt.train.optim import lr_at, make_optimizer, set_lr
from pocketgpt.train.progress import MetricsLog, Progress, peak_flops, perplexity, plot_losses


@dataclass
class TrainConfig:
    """How to train (what to train is the Stage's). Saved into run.json and every checkpoint."""

    max_steps: int = 1000  # optimizer steps
    max_minutes: float | None = None  # wall-clock budget of this invocation; a checkpoint is saved when it ends
    batch_size: int = 8  # rows per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    min_lr: float | None = None  # end of the decay; default lr / 10
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant (after the linear warmup)
    weight_decay: float = 0.1  # on matrices only (optim.param_groups)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_every: int = 100  # steps; 0 = only at the end
    eval_batches: int = 20
    ckpt_every: int = 500  # steps; 0 = only at the end
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = field(default="auto", metadata={"help": (
        "auto | fp32 | bf16 | fp16 (default auto: bf16 autocast on GPUs that have it, and for pretraining on "
        "CPUs with AVX-512 BF16 or AMX; else fp32)")})
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # shard the model over the torchrun processes instead of replicating it (DDP)
    progress: bool = True
    threads: int | None = None  # CPU intra-op threads per process (default: torch's, one per core); on a
    # busy machine 1 thread per process avoids PyTorch's stall when a core is taken (~5x slower steps)

    # changing these between a run and its resume would change the math, so --resume refuses it
    EXACT = ("batch_size", "grad_accum", "lr", "min_lr", "warmup_steps", "schedule", "weight_decay",
             "beta1", "beta2", "grad_clip", "seed", "dtype")

    def __post_init__(self) -> None:
        checks = [(self.max_steps >= 1, "max_steps must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.grad_accum >= 1, "grad_accum must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.schedule in ("cosine", "linear", "constant"), "schedule must be cosine, linear or constant"),
                  (self.dtype in ("auto", "fp32", "bf16", "fp16"), "dtype must be auto, fp32, bf16 or fp16"),
                  (self.max_minutes is None or self.max_minutes > 0, "max_minutes must be > 0"),
                  (self.threads is None or self.threads >= 1, "threads must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise ConfigMismatch(f"training config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BatchSource(Protocol):
    """An iterator of batches that can report and restore its position (for exact resume)."""

    def __next__(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


LossResult = torch.Tensor | tuple[torch.Tensor, dict[str, float]]


@dataclass
class Stage:
    """What one training stage supplies to the loop (see the module docstring)."""

    name: str
    model: torch.nn.Module  # parameters with requires_grad=True are trained
    batches: Callable[[str, int, int], BatchSource]  # (split, rank, world) -> a fresh source
    loss: Callable[[torch.nn.Module, Any], LossResult]  # (model, batch) -> mean loss [, extra metrics]
    save: Callable[[torch.nn.Module, Path], None]  # write the model directory
    tokens_per_row: int | None = None
    flops_per_token: float | None = None
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
    settings: dict = field(default_factory=dict)
    lm_loss: bool = True  # the loss is next-token cross-entropy, so exp(loss) is a perplexity
    cpu_bf16: bool = False  # dtype auto may train it in bf16 on a CPU that computes bf16 natively


@dataclass
class TrainResult:
    steps: int
    train_loss: float | None
    val_loss: float | None
    history: list[dict[str, Any]]
    out_dir: Path
    stopped: str  # "done" | "budget" | "interrupted"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside torch.compile / DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def train(stage: Stage, cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False) -> TrainResult:
    """Train `stage.model` by `cfg` into `out_dir` (see the module docstring); returns the run's summary."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    world = dist.init_world(cfg.device)
    run = _Run(stage, cfg, Path(out_dir), world)
    result = run.fit(resume)  # on an error torchrun stops the other ranks
    if world.distributed:
        # DDP's reducer holds the process group, inside reference cycles that only the garbage
        # collector frees: left to the interpreter's shutdown, gloo's threads could be torn down
        # after the interpreter (SIGABRT, "terminate called without an active exception": 3 of 15
        # two-process runs on a loaded 2-core machine). Free it here, then close the group.
        del run
        gc.collect()
    dist.close_world(world)
    return result


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _Run:
    def __init__(self, stage: Stage, cfg: TrainConfig, out_dir: Path, world: dist.World) -> None:
        self.stage, self.cfg, self.out_dir, self.world = stage, cfg, out_dir, world
        self.device = world.device
        self.amp_dtype = _amp_dtype(cfg.dtype, self.device, cpu_bf16=stage.cpu_bf16)
        self.model = stage.model.to(self.device)
        self.wrapped = dist.wrap_model(self.model, world, fsdp=cfg.fsdp)
        self.optimizer = make_optimizer(self.wrapped, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), self.device.type)
        self.forward_model = torch.compile(self.wrapped) if cfg.compile else self.wrapped
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
        self.log = MetricsLog(out_dir / "train" / "metrics.jsonl", enabled=world.is_main)
        self.step, self.tokens, self.elapsed_before = 0, 0, 0.0
        self.train_src = stage.batches("train", world.rank, world.size)
        self.last_loss: float | None = None
        self.last_val: float | None = None

    # -- the run -----------------------------------------------------------------------------------
    def fit(self, resume: bool) -> TrainResult:
        self._start(resume)
        cfg, stopped = self.cfg, "done"
        bar = Progress(cfg.max_steps, self.step, enabled=cfg.progress and self.world.is_main, desc=self.stage.name)
        t0 = time.perf_counter()
        window = (time.perf_counter(), self.tokens)  # tokens/s over the last log interval
        with _StopFlag() as flag:
            while self.step < cfg.max_steps:
                loss, extra, grad_norm = self._train_step()
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    window = self._log_train(loss, extra, grad_norm, window, bar)
                else:
                    bar.update(self.last_loss, None, None)
                over_budget = cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes
                if dist.any_across(flag.requested or over_budget, self.world):
                    stopped = "interrupted" if flag.requested else "budget"
                    break
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self._evaluate(bar)
                    window = (time.perf_counter(), self.tokens)  # eval time is not training throughput
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.max_steps:
                    self._checkpoint(time.perf_counter() - t0)
                    window = (time.perf_counter(), self.tokens)
        bar.close()
        if stopped == "done" or self.last_val is None:
            self._evaluate(bar)
        self._checkpoint(time.perf_counter() - t0)
        if stopped != "done" and self.world.is_main:
            print(f"{self.stage.name}: stopped at step {self.step} ({stopped}); checkpoint saved in "
                  f"{self.out_dir / 'checkpoint'}; continue with --resume", file=sys.stderr)
        return TrainResult(self.step, self.last_loss, self.last_val, list(self.log.rows), self.out_dir, stopped)

    def _start(self, resume: bool) -> None:
        found = state.find_checkpoint(self.out_dir)
        if resume:
            if found is None:
                raise ConfigMismatch(f"--resume: no checkpoint in {self.out_dir}; run without --resume to start")
            self._restore(found)
        else:
            if found is not None:
                raise ConfigMismatch(f"{self.out_dir} already holds a checkpoint of an earlier run; pass --resume to "
                                     "continue it, or choose a new --out (nothing was overwritten)")
            torch.manual_seed(self.cfg.seed + self.world.rank)  # dropout differs per process, reproducibly
            self.log.start_fresh()
        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out_dir / "train" / "run.json", json.dumps(self._run_info(), indent=1, ensure_ascii=False))

    def _run_info(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        return {"stage": self.stage.name, "train": self.cfg.to_dict(), "settings": self.stage.settings,
                "model": config.to_dict() if hasattr(config, "to_dict") else None,
                "world_size": self.world.size, "device": str(self.device), "torch": torch.__version__,
                "autocast": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else "off (fp32)",
                "trainable_params": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "total_params": sum(p.numel() for p in self.model.parameters())}

    # -- one optimizer step -------------------------------------------------------------------------
    def _train_step(self) -> tuple[torch.Tensor, dict[str, float], float | None]:
        cfg, model = self.cfg, self.forward_model
        model.train()
        set_lr(self.optimizer, self._lr())
        total = torch.zeros((), device=self.device)
        extras: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(self.train_src), self.device)
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.wrapped, "no_sync") else self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    loss, extra = _split(self.stage.loss(model, batch))
                self.scaler.scale(loss / cfg.grad_accum).backward()
            total += loss.detach()
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + float(v) / cfg.grad_accum
        grad_norm = None
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.tokens += cfg.batch_size * cfg.grad_accum * self.world.size * (self.stage.tokens_per_row or 1)
        return total / cfg.grad_accum, extras, grad_norm

    def _lr(self) -> float:
        c = self.cfg
        return lr_at(self.step, lr=c.lr, min_lr=self.min_lr, warmup=c.warmup_steps, total=c.max_steps, schedule=c.schedule)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- logging, eval, checkpoints -----------------------------------------------------------------
    def _log_train(self, loss: torch.Tensor, extra: dict[str, float], grad_norm, window, bar: Progress):
        now = time.perf_counter()
        self.last_loss = dist.mean_across(loss, self.world)
        seconds = max(now - window[0], 1e-9)
        tok_per_s = (self.tokens - window[1]) / seconds
        peak = peak_flops(self.device)
        mfu = (self.stage.flops_per_token * tok_per_s / (peak * self.world.size)
               if peak and self.stage.flops_per_token else None)
        row = {"step": self.step, "loss": round(self.last_loss, 6), "lr": self._lr_used(), "tokens": self.tokens,
               "tok_per_s": round(tok_per_s, 1)}
        if grad_norm is not None:
            row["grad_norm"] = round(float(grad_norm), 4)
        if mfu is not None:
            row["mfu"] = round(mfu, 4)
        row.update({k: round(v, 6) for k, v in extra.items()})
        self.log.write(row)
        bar.update(self.last_loss, tok_per_s, mfu)
        return now, self.tokens

    def _lr_used(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @torch.no_grad()
    def _evaluate(self, bar: Progress) -> None:
        model = self.forward_model
        model.eval()
        src = self.stage.batches("val", self.world.rank, self.world.size)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for _ in range(self.cfg.eval_batches):
            with self._autocast():
                loss, _ = _split(self.stage.loss(model, _to_device(next(src), self.device)))
            total += loss.double()
        self.last_val = dist.mean_across(total / self.cfg.eval_batches, self.world)
        row = {"step": self.step, "val_loss": round(self.last_val, 6)}
        if self.stage.lm_loss:
            row["val_ppl"] = round(perplexity(self.last_val), 4)
        if self.stage.evaluate is not None and self.world.is_main and not self.cfg.fsdp:
            row.update(self.stage.evaluate(self.model))
        self.log.write(row)
        ppl = f", perplexity {row['val_ppl']:.2f}" if "val_ppl" in row else ""
        bar.note(f"step {self.step}: val loss {self.last_val:.4f}{ppl}")
        if self.world.is_main:
            plot_losses(self.log.rows, self.out_dir / "train" / "loss.png", title=f"{self.stage.name}: {self.out_dir.name}")
        model.train()

    def _checkpoint(self, elapsed: float) -> None:
        """Save model + optimizer + RNG + data position (collective), and the model directory."""
        tensors, groups = state.collect(self.wrapped, self.optimizer)
        rngs = dist.gather_objects(state.rng_state(self.device), self.world)
        data = dist.gather_objects(self.train_src.state_dict(), self.world)
        if self.world.is_main:
            meta = {"step": self.step, "tokens": self.tokens, "elapsed_s": round(self.elapsed_before + elapsed, 3),
                    "stage": self.stage.name, "train": self.cfg.to_dict(), "model": self._run_info()["model"],
                    "data": data, "optimizer_groups": groups}
            self.stage.save(self._model_for_saving(tensors), self.out_dir)
            state.save_checkpoint(self.out_dir / "checkpoint", tensors, rngs, meta)
        dist.barrier(self.world)

    def _model_for_saving(self, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
        if not self.cfg.fsdp or not self.world.distributed:
            return self.model
        # FSDP holds shards: rebuild a whole copy on the CPU
        from pocketgpt.model.checkpoint import build_model

        whole = build_model(self.model.config)
        whole.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
        return whole

    def _restore(self, ckpt: Path) -> None:
        meta = state.read_meta(ckpt)
        _same_model(meta.get("model"), self._run_info()["model"], ckpt)
        old = meta.get("train", {})
        changed = [k for k in TrainConfig.EXACT if k in old and old[k] != getattr(self.cfg, k)]
        if changed:
            diff = ", ".join(f"{k}: {old[k]} -> {getattr(self.cfg, k)}" for k in changed)
            raise ConfigMismatch(f"--resume with different training settings ({diff}) would not continue the same run; "
                                 f"use the original values, or start a new --out")
        if len(meta["data"]) != self.world.size:
            raise ConfigMismatch(f"{ckpt} was saved by {len(meta['data'])} process(es); resume with the same "
                                 f"--nproc_per_node (now {self.world.size})")
        state.restore(ckpt, self.wrapped, self.optimizer, rank=self.world.rank, device=self.device,
                      param_groups=meta["optimizer_groups"])
        self.train_src.load_state_dict(meta["data"][self.world.rank])
        self.step, self.tokens, self.elapsed_before = meta["step"], meta["tokens"], meta.get("elapsed_s", 0.0)
        self.log.resume_at(self.step)
        vals = [r["val_loss"] for r in self.log.rows if "val_loss" in r]
        self.last_val = vals[-1] if vals else None
        if self.world.is_main:
            print(f"{self.stage.name}: resumed from {ckpt} at step {self.step}", file=sys.stderr)


def _same_model(saved: dict | None, now: dict | None, ckpt: Path) -> None:
    if saved is None or now is None:
        return
    now = json.loads(json.dumps(now, default=str))  # as it was saved: JSON keys are strings, tuples lists
    diff = [k for k in sorted(set(saved) | set(now)) if k != "extra" and saved.get(k) != now.get(k)]
    if diff:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in diff[:6])
        raise ConfigMismatch(f"{ckpt} was trained with a different model config: {shown}; pass the original preset "
                             "and overrides, or start a new --out")


def _amp_dtype(spec: str, device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """None = plain fp32; else the autocast dtype. `auto`: bf16 on a CUDA GPU that has it; on a CPU
    with native bf16 (AVX-512 BF16 or AMX) only for stages that allow it (`Stage.cpu_bf16`:
    pretraining, whose throughput matters most and whose val loss we measured equal to fp32's);
    else fp32. The stages that compare log-probabilities of separate forwards (PPO's ratios, DPO's
    margins) keep fp32 on CPUs, where the tests hold them to exact references."""
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_bf16 and cpu_has_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles). There, bf16 products
    run at 2.3-3.6x fp32's rate (2-core EPYC, 2 threads: 350-400 vs 110-175 GFLOP/s), and CPU
    autocast trains our presets 1.2x (tiny) to 1.7x (small) faster. Without it torch emulates bf16,
    slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def _split(result: LossResult) -> tuple[torch.Tensor, dict[str, float]]:
    return result if isinstance(result, tuple) else (result, {})


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
