"""Benchmark: batch-1 greedy decode speed of our engine vs Hugging Face `generate()` and llama.cpp,
plus our throughput with 8 concurrent sequences vs one.

Same random fp32 weights everywhere: our model directory, its `export_hf` copy loaded by
`transformers.GPT2LMHeadModel`, and its `export_gguf` (f32) copy run by `llama-cpp-python`.
Each engine continues the same 16-token prompt for `--tokens` new tokens (greedy, no early stop);
tokens/s = new tokens / wall time of the call (prefill included, best of `--repeat`).

    python bench/decode.py [--models tiny,gpt2-124m] [--tokens 128] [--repeat 3]

Ends with one JSON line per metric; ratio > 1 means ours is better.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PROMPT = list(range(100, 116))


def machine() -> dict:
    import torch

    cpu = platform.processor() or "?"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__}


def tokenizer_for(vocab_size: int):
    """GPT-2's vocabulary, cut to `vocab_size` (its first merges) so small presets get a real tokenizer."""
    from pocketgpt.text.bpe import Tokenizer

    g = Tokenizer.gpt2()
    if vocab_size == g.vocab_size:
        return g
    n = vocab_size - 1  # the last id is <|endoftext|>
    return Tokenizer({b: i for b, i in g.ranks.items() if i < n}, {"<|endoftext|>": n}, merges=g.merges[: n - 256])


def build(preset: str, root: Path) -> Path:
    import torch

    from pocketgpt.config import get_preset
    from pocketgpt.model.checkpoint import save_model
    from pocketgpt.model.gpt import GPT

    torch.manual_seed(0)
    cfg = get_preset(preset)
    return save_model(GPT(cfg).eval(), root / preset, tokenizer_for(cfg.vocab_size))


def best_rate(fn, n_tokens: int, repeat: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    best = min(_timed(fn) for _ in range(repeat))
    return n_tokens / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours(model_dir: Path, n: int, repeat: int, batch: int = 1) -> tuple[float, list[int]]:
    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams
    from pocketgpt.model.checkpoint import load_model

    model, _ = load_model(model_dir)
    engine = Engine(model, max_batch=batch, max_len=len(PROMPT) + n + 1)
    params = SamplingParams(max_tokens=n, temperature=0.0)
    out: list = []
    rate = best_rate(lambda: out.__setitem__(slice(None), engine.generate([PROMPT] * batch, params)), n * batch, repeat)
    return rate, out[0].tokens


def hf(model_dir: Path, tmp: Path, n: int, repeat: int) -> tuple[float, list[int]]:
    import torch
    from transformers import GPT2LMHeadModel

    from pocketgpt.model.hf import export_hf

    model = GPT2LMHeadModel.from_pretrained(export_hf(model_dir, tmp / "hf")).eval()
    ids = torch.tensor([PROMPT])
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    out: list = [None]

    def run():
        with torch.no_grad():
            out[0] = model.generate(ids, **kw)[0, len(PROMPT):].tolist()

    return best_rate(run, n, repeat), out[0]


def llama_cpp(model_dir: Path, tmp: Path, n: int, repeat: int) -> tuple[float, list[int]]:
    import llama_cpp

    from pocketgpt.model.gguf_export import export_gguf

    path = export_gguf(model_dir, tmp / "m.gguf", "f32")
    llm = llama_cpp.Llama(str(path), n_ctx=len(PROMPT) + n + 8, n_threads=2, n_batch=64, verbose=False)
    out: list = [None]

    def run():
        llm.reset()
        toks = []
        for t in llm.generate(PROMPT, top_k=1, temp=0.0, reset=True):
            toks.append(t)
            if len(toks) == n:
                break
        out[0] = toks

    return best_rate(run, n, repeat), out[0]


def bench_model(preset: str, root: Path, n: int, repeat: int) -> list[dict]:
    d = build(preset, root)
    o1, o_tok = ours(d, n, repeat)
    h, h_tok = hf(d, root / preset, n, repeat)
    c, c_tok = llama_cpp(d, root / preset, n, repeat)
    o8, _ = ours(d, n, repeat, batch=8)
    same = sum(a == b for a, b in zip(o_tok, h_tok, strict=False))
    print(f"{preset}: ours {o1:.1f} tok/s, HF generate {h:.1f}, llama.cpp {c:.1f}; 8 streams {o8:.1f} tok/s "
          f"({o8 / o1:.2f}x); greedy tokens equal to HF's for {same}/{n}, "
          f"to llama.cpp's for {sum(a == b for a, b in zip(o_tok, c_tok, strict=False))}/{n}")
    goal_hf, goal_cpp = (3.0, 0.5) if preset == "tiny" else (None, 1.0)
    rows = [{"bench": "decode", "metric": f"{preset}_batch1_tok_per_s", "ours": round(o1, 1),
             "peer": "llama.cpp (llama-cpp-python, f32, n_threads=2)", "peer_value": round(c, 1),
             "ratio": round(o1 / c, 3), "goal": goal_cpp},
            {"bench": "decode", "metric": f"{preset}_batch1_tok_per_s", "ours": round(o1, 1),
             "peer": "transformers generate()", "peer_value": round(h, 1), "ratio": round(o1 / h, 3), "goal": goal_hf},
            {"bench": "decode", "metric": f"{preset}_8_streams_vs_1_tok_per_s", "ours": round(o8, 1),
             "peer": "ours, single stream", "peer_value": round(o1, 1), "ratio": round(o8 / o1, 3), "goal": 4.0}]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,gpt2-124m", help="comma-separated presets (default tiny,gpt2-124m)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per run (default 128)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts (default 3)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    print("config:", json.dumps({"models": args.models, "prompt_tokens": len(PROMPT), "new_tokens": args.tokens,
                                 "repeat": args.repeat, "dtype": "float32", "sampling": "greedy"}))
    print("machine:", json.dumps(machine()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models.split(","):
            rows += bench_model(preset, Path(tmp), args.tokens, args.repeat)
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
