"""Benchmark: SFT vs SFT+PPO vs SFT+DPO on held-out prompts of the built-in tasks.

Per model, on `--n` held-out examples per task (split "test": unseen instruction templates):

    accuracy    greedy answers through the Engine, each task's own scorer (tasks/), overall and per task
    sampled     the same scorer on one answer per prompt sampled at temperature 1 (what PPO trains on)
    RM score    the reward model's mean score of those greedy answers (train/reward.py)
    length      mean greedy answer length in tokens
    KL to SFT   on those sampled answers' own tokens (the turn end included when sampled), summed:
                log pi(y|x) - log pi_SFT(y|x); the mean is a Monte-Carlo estimate of KL(pi || SFT)
                in nats per answer (exactly 0 for the SFT model itself)

    python bench/rlhf_table.py --sft runs/tiny-sft --rm runs/tiny-rm --model PPO=runs/ppo --model DPO=runs/dpo \\
        --tasks count_letters,sentiment --n 200 [--md table.md] [--png bars.png]   (docs/rlhf.md has the measured run)

Prints the config, the machine, a markdown table, and ends with one JSON line (ours = the first
--model's accuracy, peer = SFT's, in points).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402


@torch.no_grad()
def sample_token_ids(
    model, tok, template, items, max_tokens: int, seed: int
) -> list[tuple[list[int], list[int], str]]:
    """One answer per item sampled at temperature 1 through the Engine: (prompt ids, answer ids, text),
    the turn-end token kept when the answer stopped there, so the KL below scores exactly the sampled tokens."""
    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams

    stop_ids = tuple(template.stop_ids(tok))
    engine = Engine(model, tok, max_batch=16)
    prompts = [template.encode(tok, it["messages"], add_generation_prompt=True) for it in items]
    room = lambda p: max(1, min(max_tokens, model.config.block_size - len(p) - 1))  # noqa: E731
    handles = [
        engine.submit(p, SamplingParams(max_tokens=room(p), stop_ids=stop_ids, seed=seed * 1_000_003 + i))
        for i, p in enumerate(prompts)
    ]
    while engine.step():
        pass
    out = []
    for p, h in zip(prompts, handles, strict=True):
        c = h.result()
        end = [stop_ids[0]] if c.finish_reason == "stop" and stop_ids else []
        out.append((p, list(c.tokens) + end, c.text.strip()))
    return out


@torch.no_grad()
def kl_to_reference(model, ref, pad: int, samples: list[tuple[list[int], list[int], str]]) -> float:
    """Mean over answers sampled from `model` of sum_t log pi(y_t|...) - log pi_ref(y_t|...): a Monte-Carlo
    estimate of KL(pi || pi_ref) in nats per answer."""
    from pocketgpt.train.logprobs import sequence_logprob
    from pocketgpt.train.reward import pad_batch

    total = 0.0
    for i in range(0, len(samples), 16):
        chunk = samples[i : i + 16]
        ids, mask = pad_batch([p + a for p, a, _ in chunk], pad)  # (B, T)
        resp = torch.zeros(ids.shape[0], ids.shape[1] - 1)  # (B, T - 1): entry t scores token t + 1
        for b, (p, a, _) in enumerate(chunk):
            resp[b, len(p) - 1 : len(p) + len(a) - 1] = 1.0
        diff = sequence_logprob(model, ids, mask, resp) - sequence_logprob(ref, ids, mask, resp)  # (B,)
        total += float(diff.sum())
    return total / max(len(samples), 1)


def measure(name: str, model, sft, tok, items, rm, rm_tok, template, max_tokens: int, seed: int) -> dict:
    from pocketgpt.text.formats import pad_id_of
    from pocketgpt.train.reward import score_texts
    from pocketgpt.train.task_rewards import sample_answers, task_reward

    greedy = [
        a[0] if a else ""
        for a in sample_answers(
            model, tok, items, 1, template=template, max_tokens=max_tokens, temperature=0.0
        )
    ]
    sampled = sample_token_ids(model, tok, template, items, max_tokens, seed)
    scores = task_reward(items, greedy)
    sampled_scores = task_reward(items, [text for _, _, text in sampled])
    per_task: dict[str, list[float]] = {}
    for it, s in zip(items, scores, strict=True):
        per_task.setdefault(it["task"], []).append(s)
    row = {
        "model": name,
        "accuracy": sum(scores) / len(scores),
        "sampled_accuracy": sum(sampled_scores) / len(sampled_scores),
        "per_task": {k: sum(v) / len(v) for k, v in per_task.items()},
        "length": sum(len(tok.encode(a)) for a in greedy) / len(greedy),
        "kl_to_sft": kl_to_reference(model, sft, pad_id_of(tok), sampled),
        "samples": [
            {"prompt": it["messages"][0]["content"], "answer": a}
            for it, a in zip(items[:3], greedy, strict=False)
        ],
    }
    if rm is not None:
        rs = score_texts(rm, rm_tok, [it["messages"] for it in items], greedy)
        row["rm_score"] = sum(rs) / len(rs)
    return row


def markdown(rows: list[dict]) -> str:
    tasks = list(rows[0]["per_task"])
    head = (
        "| model | accuracy (greedy) | "
        + " | ".join(tasks)
        + " | accuracy (sampled) | RM score | KL to SFT (nats/answer) | length (tokens) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rm = f"{r['rm_score']:.3f}" if "rm_score" in r else "-"
        lines.append(
            f"| {r['model']} | {100 * r['accuracy']:.1f}% | "
            + " | ".join(f"{100 * r['per_task'][t]:.1f}%" for t in tasks)
            + f" | {100 * r['sampled_accuracy']:.1f}% | {rm} | {r['kl_to_sft']:.2f} | {r['length']:.1f} |"
        )
    return "\n".join(lines)


def bars(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketgpt.atomic import atomic_path

    keys = [
        ("accuracy", "held-out accuracy"),
        ("kl_to_sft", "KL to SFT (nats/answer)"),
        ("length", "answer tokens"),
    ]
    if all("rm_score" in r for r in rows):
        keys.insert(1, ("rm_score", "RM score"))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.1 * len(keys), 2.8), dpi=80)
    names = [r["model"] for r in rows]
    for ax, (key, label) in zip(axes, keys, strict=True):
        ax.bar(range(len(rows)), [r[key] for r in rows], color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from pocketgpt.eval.machine import machine
    from pocketgpt.model.peft import load_model_with_adapter
    from pocketgpt.text.chat import template_for
    from pocketgpt.train.reward import load_reward_model
    from pocketgpt.train.task_rewards import prompt_items

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft", required=True)
    ap.add_argument("--rm", default=None)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--n", type=int, default=50, help="held-out examples per task")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None, help="write all rows here")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    print(json.dumps({"config": vars(args), "machine": machine(), "loadavg": os.getloadavg()}))
    sft, tok = load_model_with_adapter(args.sft)
    template = template_for(tok)
    rm, rm_tok = load_reward_model(args.rm) if args.rm else (None, None)
    n_tasks = len(args.tasks.split(",")) if args.tasks else 8
    items = prompt_items(args.n * n_tasks, seed=args.seed + 1, task_names=args.tasks, split="test")
    rows = [measure("SFT", sft, sft, tok, items, rm, rm_tok, template, args.max_tokens, args.seed)]
    for spec in args.model:
        name, _, path = spec.rpartition("=")  # the name may hold "=" (beta=0), a path rarely does
        model, _ = load_model_with_adapter(path)
        rows.append(measure(name, model, sft, tok, items, rm, rm_tok, template, args.max_tokens, args.seed))
    table = markdown(rows)
    print(table)
    if args.md:
        Path(args.md).write_text(table + "\n", encoding="utf-8")
    if args.png:
        bars(rows, Path(args.png))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    ours = rows[1] if len(rows) > 1 else rows[0]
    print(
        json.dumps(
            {
                "bench": "rlhf",
                "metric": "held-out task accuracy (points)",
                "ours": round(100 * ours["accuracy"], 1),
                "peer": "SFT",
                "peer_value": round(100 * rows[0]["accuracy"], 1),
                "ratio": round(ours["accuracy"] / max(rows[0]["accuracy"], 1e-9), 3),
                "goal": f">= +10 points over SFT with KL bounded ({ours['model']} KL {ours['kl_to_sft']:.2f} nats)",
                "loadavg": os.getloadavg()[0],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
