"""Benchmark: batch-1 greedy decode speed of our engine vs Hugging Face `generate()` and llama.cpp,
plus our throughput with 8 concurrent sequences vs one.

Same random fp32 weights everywhere: our model directory, its `export_hf` copy loaded by
`transformers.GPT2LMHeadModel`, and its `export_gguf` (f32) copy run by `llama-cpp-python`.
Each engine continues the same 16-token prompt for `--tokens` new tokens (greedy, no early stop);
tokens/s = new tokens / wall time of the call (prefill included). The engines run in alternating
rounds in this one process (a busy spell on the shared CPU hits all of them), best of `--repeat`.

    python bench/decode.py [--models tiny,gpt2-124m] [--tokens 128] [--repeat 5] [--threads 2]

With `--threads 1` every engine computes in the calling thread, so the rates are also reported in
that thread's CPU time (`time.thread_time`), which leaves out the time spent descheduled: on a
shared, overloaded machine that is the comparable number.

Ends with one JSON line per metric; ratio > 1 means ours is better.
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

PROMPT = list(range(100, 116))


def tokenizer_for(vocab_size: int):
    """GPT-2's vocabulary, cut to `vocab_size` (its first merges) so small presets get a real tokenizer."""
    from pocketgpt.text.bpe import Tokenizer

    g = Tokenizer.gpt2()
    if vocab_size == g.vocab_size:
        return g
    n = vocab_size - 1  # the last id is <|endoftext|>
    return Tokenizer(
        {b: i for b, i in g.ranks.items() if i < n}, {"<|endoftext|>": n}, merges=g.merges[: n - 256]
    )


def build(preset: str, root: Path) -> Path:
    import torch

    from pocketgpt.config import get_preset
    from pocketgpt.model.checkpoint import save_model
    from pocketgpt.model.gpt import GPT

    torch.manual_seed(0)
    cfg = get_preset(preset)
    return save_model(GPT(cfg).eval(), root / preset, tokenizer_for(cfg.vocab_size))


class Runner:
    """One engine under test: `run()` generates once; `tokens` holds its last output; `rate` its best
    wall-clock rate, `cpu_rate` its best rate in CPU time of the calling thread: with one thread
    everywhere (`--threads 1`) all the work runs in that thread, and CPU time does not count the
    time the thread spent descheduled, which is most of the noise on a shared machine."""

    def __init__(self, name: str, run, new_tokens: int) -> None:
        self.name, self._run, self.new_tokens = name, run, new_tokens
        self.tokens: list[int] = []
        self.best = self.best_cpu = float("inf")

    def __call__(self) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        self.tokens = self._run()
        self.best = min(self.best, time.perf_counter() - t0)
        self.best_cpu = min(self.best_cpu, time.thread_time() - c0)

    @property
    def cpu_rate(self) -> float:
        return self.new_tokens / self.best_cpu

    @property
    def rate(self) -> float:
        return self.new_tokens / self.best


def ours(model_dir: Path, n: int, batch: int = 1, fast: bool = True) -> Runner:
    import torch

    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams
    from pocketgpt.model.checkpoint import load_model

    model, _ = load_model(model_dir)
    engine = Engine(model, max_batch=batch, max_len=len(PROMPT) + n + 1, fast=fast)
    params = SamplingParams(max_tokens=n, temperature=0.0)
    threads_used: set[int] = set()  # the engine's thread policy may step on fewer threads on a busy machine

    def run() -> list[int]:
        tokens = engine.generate([PROMPT] * batch, params)[0].tokens
        threads_used.add(engine.scheduler.threads or torch.get_num_threads())
        return tokens

    runner = Runner(f"ours x{batch}", run, n * batch)
    runner.threads_used = threads_used
    return runner


def hf(model_dir: Path, tmp: Path, n: int) -> Runner:
    import torch
    from transformers import GPT2LMHeadModel

    from pocketgpt.model.hf import export_hf

    model = GPT2LMHeadModel.from_pretrained(export_hf(model_dir, tmp / "hf")).eval()
    ids = torch.tensor([PROMPT])
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def run() -> list[int]:
        with torch.no_grad():
            return model.generate(ids, **kw)[0, len(PROMPT) :].tolist()

    return Runner("HF generate", run, n)


def llama_cpp(model_dir: Path, tmp: Path, n: int, threads: int) -> Runner:
    import llama_cpp

    from pocketgpt.model.gguf_export import export_gguf

    path = export_gguf(model_dir, tmp / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=len(PROMPT) + n + 8, n_threads=threads, n_batch=64, verbose=False)

    def run() -> list[int]:
        llm.reset()
        toks = []
        for t in llm.generate(PROMPT, top_k=1, temp=0.0, reset=True):
            toks.append(t)
            if len(toks) == n:
                break
        return toks

    return Runner("llama.cpp", run, n)


def bench_model(preset: str, root: Path, n: int, repeat: int, threads: int) -> list[dict]:
    """All engines on one model, in alternating rounds (the CPU is shared: a slow spell hits every
    engine, not one), best of `repeat` rounds each."""
    d = build(preset, root)
    runners = [
        ours(d, n),
        hf(d, root / preset, n),
        llama_cpp(d, root / preset, n, threads),
        ours(d, n, batch=8),
    ]
    for r in runners:
        r()  # warm-up (allocations, lazy init); not counted
        r.best = r.best_cpu = float("inf")
    load_before = os.getloadavg()[0]
    for _ in range(repeat):
        for r in runners:
            r()
    load_after = os.getloadavg()[0]
    one, h, c, eight = runners
    o1, o8 = one.rate, eight.rate
    same_hf = sum(a == b for a, b in zip(one.tokens, h.tokens, strict=False))
    same_cpp = sum(a == b for a, b in zip(one.tokens, c.tokens, strict=False))
    print(
        f"{preset}: ours {o1:.1f} tok/s, HF generate {h.rate:.1f}, llama.cpp {c.rate:.1f}; 8 streams {o8:.1f} "
        f"tok/s ({o8 / o1:.2f}x); greedy tokens equal to HF's for {same_hf}/{n}, to llama.cpp's for "
        f"{same_cpp}/{n}; load average {load_before:.1f} -> {load_after:.1f}; ours stepped on "
        f"{sorted(one.threads_used)} thread(s), 8 streams on {sorted(eight.threads_used)}"
    )
    goal_hf, goal_cpp = (3.0, 0.5) if preset == "tiny" else (None, 1.0)
    common = {"bench": "decode", "load_avg": [round(load_before, 2), round(load_after, 2)]}
    rows = []
    if threads == 1:  # every engine works in this thread: CPU time is meaningful, and robust to load
        c1, c8 = one.cpu_rate, eight.cpu_rate
        print(
            f"{preset}, CPU time: ours {c1:.1f} tok/s, HF generate {h.cpu_rate:.1f}, llama.cpp {c.cpu_rate:.1f}; "
            f"8 streams {c8:.1f} tok/s ({c8 / c1:.2f}x)"
        )
        cpu = {**common, "metric": f"{preset}_batch1_cpu_time_tok_per_s", "ours": round(c1, 1)}
        rows += [
            {
                **cpu,
                "peer": "llama.cpp (n_threads=1)",
                "peer_value": round(c.cpu_rate, 1),
                "ratio": round(c1 / c.cpu_rate, 3),
                "goal": goal_cpp,
            },
            {
                **cpu,
                "peer": "transformers generate()",
                "peer_value": round(h.cpu_rate, 1),
                "ratio": round(c1 / h.cpu_rate, 3),
                "goal": goal_hf,
            },
            {
                **common,
                "metric": f"{preset}_8_streams_vs_1_cpu_time_tok_per_s",
                "ours": round(c8, 1),
                "peer": "ours, single stream",
                "peer_value": round(c1, 1),
                "ratio": round(c8 / c1, 3),
                "goal": 4.0,
            },
        ]
    return rows + [
        {
            **common,
            "metric": f"{preset}_batch1_tok_per_s",
            "ours": round(o1, 1),
            "peer": f"llama.cpp (llama-cpp-python, f32, n_threads={threads})",
            "peer_value": round(c.rate, 1),
            "ratio": round(o1 / c.rate, 3),
            "goal": goal_cpp,
        },
        {
            **common,
            "metric": f"{preset}_batch1_tok_per_s",
            "ours": round(o1, 1),
            "peer": "transformers generate()",
            "peer_value": round(h.rate, 1),
            "ratio": round(o1 / h.rate, 3),
            "goal": goal_hf,
        },
        {
            **common,
            "metric": f"{preset}_8_streams_vs_1_tok_per_s",
            "ours": round(o8, 1),
            "peer": "ours, single stream",
            "peer_value": round(o1, 1),
            "ratio": round(o8 / o1, 3),
            "goal": 4.0,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models", default="tiny,gpt2-124m", help="comma-separated presets (default tiny,gpt2-124m)"
    )
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per run (default 128)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds; the best counts (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads (default 2)")
    args = ap.parse_args(argv)

    import torch

    from pocketgpt.eval.machine import machine

    torch.set_num_threads(args.threads)
    print(
        "config:",
        json.dumps(
            {
                "models": args.models,
                "prompt_tokens": len(PROMPT),
                "new_tokens": args.tokens,
                "repeat": args.repeat,
                "threads": args.threads,
                "dtype": "float32",
                "sampling": "greedy",
            }
        ),
    )
    print("machine:", json.dumps(machine("transformers", "llama_cpp_python")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models.split(","):
            rows += bench_model(preset, Path(tmp), args.tokens, args.repeat, args.threads)
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
