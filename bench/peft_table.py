"""Benchmark: full fine-tuning vs LoRA vs prefix tuning vs prompt tuning, on one base model.

Part 1 (always), per method: trainable parameters, time per optimizer step and memory, on the
same SFT batch (built-in task conversations packed into block_size rows). One step is
zero_grad -> forward -> loss (assistant tokens only) -> backward -> AdamW step, exactly the loop's
optimizer (train/optim.make_optimizer). Methods take turns for `--rounds` rounds (alternating
order) and the best round counts, so a noisy neighbour slows all alike. Memory, counted from the
tensors themselves (the same on any device): the training state held after a step (weights +
gradients + AdamW moments) and the activations autograd saves for the backward pass
(torch.autograd.graph.saved_tensors_hooks, storage counted once); on CUDA also the peak allocated.
"lora" is LoRA on attn.qkv + attn.proj (the default), "lora-all" on every block Linear.

Part 2 (`--accuracy`), per method: SFT through the real loop (train/sft.py) for `--sft-steps`
steps on `--n` built-in task examples, then held-out task accuracy (eval/tasks.py, greedy,
`--eval-n` examples per task); the base model is scored too. LoRA's share of full SFT's accuracy
is the issue's ">= 90% with < 5% of the parameters" check.

Or (`--scores METHOD=FILE ...`) the accuracy columns come from `pocketgpt eval-tasks --json` outputs
of models trained beforehand with `pocketgpt sft` (the CLI runs, one at a time, that
docs/finetuning.md lists); the table then has one row per method with its timing, memory and
accuracy (overall, per task, and as a share of full SFT's).

    python bench/peft_table.py [--model DIR] [--accuracy] [--sft-steps 300] [--json out.json]
    python bench/peft_table.py --model runs/tiny --threads 1 --scores full=full.json lora-all=lora.json ...

Without --model the tiny preset is randomly initialised (with a tokenizer trained on the task
data), and the accuracy numbers then say little; say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from pocketgpt.eval.machine import machine  # noqa: E402
from pocketgpt.model import peft  # noqa: E402

METHODS = ("full", "lora", "lora-all", "prefix", "prompt")
# learning rates per method, as in the runs docs/finetuning.md reports
LR = {"full": 1e-3, "lora": 3e-3, "lora-all": 1e-2, "prefix": 1e-1, "prompt": 3e-2}
# "lora-all": LoRA on every block Linear, as the CLI does by default (mlp.gate only in SwiGLU models)
ALL_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj", "mlp.gate")


def base_model(model_dir: str | None, device: str):
    """(model, tokenizer, where from)."""
    from pocketgpt.model.checkpoint import load_model

    if model_dir:
        model, tok = load_model(model_dir, device=device)
        return model, tok, model_dir
    from pocketgpt import tasks
    from pocketgpt.config import get_preset
    from pocketgpt.model.checkpoint import build_model
    from pocketgpt.text.bpe import Tokenizer
    from pocketgpt.text.instructions import user_text
    from pocketgpt.text.specials import RESERVED

    text = "\n".join(user_text(e) + " " + e["output"] for e in tasks.generate(2000, seed=99))
    tok = Tokenizer.train(text, 1024, special_tokens=RESERVED, progress=False)
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=tok.vocab_size)).to(device)
    return model, tok, "tiny preset, random init"


def fresh(method: str, model_dir: str | None, device: str, r: int, n_virtual: int):
    model, tok, _ = base_model(model_dir, device) if model_dir else CACHE["random"]
    if not model_dir:
        model = _clone(model)
    if method == "lora-all":
        peft.apply_lora(model, ALL_LINEARS, r=r, alpha=2.0 * r)
    elif method != "full":
        peft.attach(model, peft.PeftConfig(method, r=r, alpha=2.0 * r, n_virtual=n_virtual))
    return model.train(), tok


def _clone(model):
    import copy

    return copy.deepcopy(model)


CACHE: dict = {}


def batch(tok, block_size: int, batch_size: int, device: str):
    from pocketgpt import tasks
    from pocketgpt.text.instructions import to_messages
    from pocketgpt.train.sft import collate_rows, sft_rows

    convs = [to_messages(e) for e in tasks.generate(8 * batch_size, seed=1)]
    rows = sft_rows(convs, tok, block_size)[:batch_size]
    x, y = collate_rows(rows)
    return x.to(device), y.to(device)


def state_bytes(model, opt) -> int:
    """Weights + gradients + optimizer moments, counted from the tensors (a tied matrix once)."""
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() * p.element_size() for p in params)
    total += sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    for st in opt.state.values():
        total += sum(t.numel() * t.element_size() for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    return total


def saved_activation_bytes(model, x, y) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward (each storage once): what a
    method must hold between forward and backward besides its weights and optimizer state."""
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # counted as weights already

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def time_steps(args) -> list[dict]:
    from pocketgpt.train.optim import make_optimizer
    from pocketgpt.train.sft import row_length

    dev = args.device
    runs = {}
    for m in METHODS:
        model, tok = fresh(m, args.model, dev, args.r, args.n_virtual)
        T = row_length(model, args.block_size)  # the soft prompt's positions come off the row
        x, y = batch(tok, T, args.batch_size, dev)
        opt = make_optimizer(model, LR[m], 0.0, (0.9, 0.95), torch.device(dev).type)
        runs[m] = dict(
            model=model, opt=opt, x=x, y=y, best=float("inf"), peak=0, act=saved_activation_bytes(model, x, y)
        )

    def step(run) -> None:
        run["opt"].zero_grad(set_to_none=True)
        run["model"](run["x"], run["y"]).backward()
        run["opt"].step()

    for run in runs.values():  # warm-up (allocates the AdamW state)
        for _ in range(2):
            step(run)
    for rnd in range(args.rounds):
        order = METHODS if rnd % 2 == 0 else METHODS[::-1]
        for m in order:
            run = runs[m]
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(run)
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
                run["peak"] = max(run["peak"], torch.cuda.max_memory_allocated())
            run["best"] = min(run["best"], (time.perf_counter() - t0) / args.steps)
    rows = []
    for m in METHODS:
        run = runs[m]
        trainable, total = peft.parameter_counts(run["model"])
        rows.append(
            {
                "method": m,
                "trainable": trainable,
                "total": total,
                "trainable_pct": 100.0 * trainable / total,
                "ms_per_step": 1000 * run["best"],
                "state_mb": state_bytes(run["model"], run["opt"]) / 2**20,
                "activations_mb": run["act"] / 2**20,
                "cuda_peak_mb": run["peak"] / 2**20 if run["peak"] else None,
            }
        )
    return rows


def accuracy(args) -> dict:
    """SFT each method through the loop, then held-out task accuracy (base model too)."""
    from pocketgpt import tasks
    from pocketgpt.eval.tasks import evaluate_tasks
    from pocketgpt.text.instructions import to_messages
    from pocketgpt.train.loop import TrainConfig, train
    from pocketgpt.train.sft import sft_stage

    out = {}
    model, tok = fresh("full", args.model, args.device, args.r, args.n_virtual)
    out["base"] = evaluate_tasks(model.eval(), tok, n=args.eval_n, max_tokens=32)["overall"]
    convs = [to_messages(e) for e in tasks.generate(args.n, seed=0)]
    tmp = Path(tempfile.mkdtemp(prefix="peft_table_"))
    for m in args.methods.split(","):
        model, tok = fresh(m, args.model, args.device, args.r, args.n_virtual)
        stage = sft_stage(model, tok, convs[50:], convs[:50], batch_size=args.batch_size, seed=0,
                          block_size=args.block_size)
        cfg = TrainConfig(
            max_steps=args.sft_steps,
            batch_size=args.batch_size,
            lr=LR[m],
            warmup_steps=20,
            weight_decay=0.0,
            eval_every=0,
            ckpt_every=0,
            log_every=50,
            device=args.device,
            progress=False,
            eval_batches=5,
        )
        t0 = time.perf_counter()
        result = train(stage, cfg, tmp / m)
        tuned, tok2 = peft.load_model_with_adapter(tmp / m, device=args.device)
        score = evaluate_tasks(tuned, tok2, n=args.eval_n, max_tokens=32)
        out[m] = score["overall"]
        out[f"{m}_tasks"] = {t["task"]: t["accuracy"] for t in score["tasks"]}
        out[f"{m}_val_loss"] = result.val_loss
        _save_partial(args, out)
        print(
            f"{m}: {args.sft_steps} steps in {time.perf_counter() - t0:.0f}s, val loss {result.val_loss:.3f}, "
            f"task accuracy {100 * score['overall']:.1f}%",
            file=sys.stderr,
        )
    return out


def _save_partial(args, acc: dict) -> None:
    if args.json:
        Path(args.json + ".partial").write_text(json.dumps(acc, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="base model directory (default: tiny preset, random init)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--block-size", type=int, default=None, help="tokens per row (default: as `pocketgpt sft`: the context, at most 1024)"
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--r", type=int, default=8, help="LoRA rank (alpha = 2r)")
    ap.add_argument("--n-virtual", type=int, default=16, help="prefix / prompt length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--accuracy", action="store_true", help="also SFT each method and score the built-in tasks"
    )
    ap.add_argument("--methods", default="full,lora,prefix,prompt", help="methods for --accuracy")
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=4000, help="SFT examples for --accuracy")
    ap.add_argument("--eval-n", type=int, default=25, help="held-out examples per task for --accuracy")
    ap.add_argument(
        "--scores",
        nargs="+",
        default=[],
        metavar="METHOD=FILE",
        help="accuracy from `pocketgpt eval-tasks --json` files (METHOD: base or one of "
        + ", ".join(METHODS)
        + ")",
    )
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--plot", default=None, metavar="PNG", help="with --scores: accuracy per task as bars")
    args = ap.parse_args(argv)
    scores = read_scores(args.scores)
    torch.set_num_threads(args.threads)
    if not args.model:
        CACHE["random"] = base_model(None, args.device)
    where = args.model or "tiny preset, random init"
    rows = time_steps(args)
    print(
        f"\nbase: {where}; device {args.device}; batch {args.batch_size} rows of {args.block_size or 'block_size'} tokens; "
        f"best of {args.rounds} rounds x {args.steps} steps; load average {os.getloadavg()[0]:.2f}"
    )
    print("machine:", json.dumps(machine()), "\n")
    print(
        "| method | trainable params | % of total | ms / step | train state MB | activations MB | CUDA peak MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] else "-"
        print(
            f"| {r['method']} | {r['trainable']:,} | {r['trainable_pct']:.2f}% | {r['ms_per_step']:.1f} | "
            f"{r['state_mb']:.2f} | {r['activations_mb']:.1f} | {peak} |"
        )
    result = {"base": where, "device": args.device, "machine": machine(), "timing": rows}
    if scores:
        result["accuracy"] = {m: s["overall"] for m, s in scores.items()}
        result["accuracy"].update({f"{m}_tasks": s["tasks"] for m, s in scores.items()})
        print_scores(rows, scores)
        if args.plot:
            plot_scores(scores, args.plot, f"held-out task accuracy, base {where}")
            print(f"plot: {args.plot}")
    elif args.accuracy:
        acc = accuracy(args)
        result["accuracy"] = acc
        print("\n| model | held-out task accuracy |\n|---|---:|")
        for k in ("base", *args.methods.split(",")):
            v = acc.get(k)
            print(f"| {k} | {'-' if v is None else f'{100 * v:.1f}%'} |")
        if acc.get("full") and acc.get("lora") is not None:
            print(f"\nLoRA reaches {100 * acc['lora'] / acc['full']:.0f}% of full SFT's accuracy")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(closing_line(result)))
    return 0


def plot_scores(scores: dict[str, dict], path: str, title: str) -> None:
    """Grouped bars: held-out accuracy per task (and overall) for every scored method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    tasks = [*next(iter(scores.values()))["tasks"], "overall"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for i, m in enumerate(names):
        vals = [100 * (scores[m]["overall"] if t == "overall" else scores[m]["tasks"].get(t, 0.0)) for t in tasks]
        ax.bar([k + (i - (len(names) - 1) / 2) * width for k in range(len(tasks))], vals, width, label=m)
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=len(names))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_scores(specs: list[str]) -> dict[str, dict]:
    """METHOD=FILE pairs -> {method: {"overall": accuracy, "tasks": {task: accuracy}, "n": per task}}."""
    out = {}
    for spec in specs:
        method, sep, path = spec.partition("=")
        if not sep or method not in ("base", *METHODS):
            raise SystemExit(
                f"--scores {spec!r}: want METHOD=FILE with METHOD base or one of {', '.join(METHODS)}"
            )
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        out[method] = {
            "overall": data["overall"],
            "n": data["n"],
            "tasks": {t["task"]: t["accuracy"] for t in data["tasks"]},
        }
    return out


def print_scores(rows: list[dict], scores: dict[str, dict]) -> None:
    """The one table (parameters, accuracy, time, memory per method) and accuracy per task."""
    full = scores.get("full", {}).get("overall")
    print(
        "\n| method | trainable params | accuracy (overall) | % of full SFT | ms / step | train state MB | "
        "activations MB |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    if "base" in scores:
        print(f"| base (no fine-tuning) | 0 | {100 * scores['base']['overall']:.1f}% | - | - | - | - |")
    for r in rows:
        s = scores.get(r["method"])
        acc = "-" if s is None else f"{100 * s['overall']:.1f}%"
        share = "-" if s is None or not full else f"{100 * s['overall'] / full:.0f}%"
        print(
            f"| {r['method']} | {r['trainable']:,} ({r['trainable_pct']:.2f}%) | {acc} | {share} | "
            f"{r['ms_per_step']:.0f} | {r['state_mb']:.2f} | {r['activations_mb']:.1f} |"
        )
    names = list(scores)
    tasks = list(next(iter(scores.values()))["tasks"])
    print(f"\nheld-out accuracy per task ({next(iter(scores.values()))['n']} examples each, en + zh):\n")
    print("| task | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names))
    for t in tasks:
        print(f"| {t} | " + " | ".join(f"{100 * scores[m]['tasks'].get(t, 0.0):.1f}%" for m in names) + " |")
    print("| **overall** | " + " | ".join(f"**{100 * scores[m]['overall']:.1f}%**" for m in names) + " |")


def closing_line(result: dict) -> dict:
    """The bench contract's last line: LoRA (ours) against full fine-tuning (peer). With accuracy,
    LoRA's share of full SFT's task accuracy (goal >= 0.9; lora-all, every block Linear, when it was
    scored, else lora); without, training state, full / LoRA."""
    t = {r["method"]: r for r in result["timing"]}
    acc = result.get("accuracy") or {}
    lora = "lora-all" if acc.get("lora-all") is not None else "lora"
    if acc.get("full") and acc.get(lora) is not None:
        return {
            "bench": "peft_table",
            "metric": f"task_accuracy_{lora.replace('-', '_')}_r8",
            "ours": acc[lora],
            "peer": "full SFT",
            "peer_value": acc["full"],
            "ratio": round(acc[lora] / acc["full"], 3),
            "goal": f">= 0.9 with {t[lora]['trainable_pct']:.2f}% of the parameters trained (< 5%)",
        }
    return {
        "bench": "peft_table",
        "metric": "train_state_mb_lora_r8",
        "ours": round(t["lora"]["state_mb"], 2),
        "peer": "full fine-tuning",
        "peer_value": round(t["full"]["state_mb"], 2),
        "ratio": round(t["full"]["state_mb"] / t["lora"]["state_mb"], 2),
        "goal": "> 1 (less state to train)",
    }


if __name__ == "__main__":
    raise SystemExit(main())
