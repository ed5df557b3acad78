"""Benchmark: the server under load — concurrent streaming clients against a tiny model.

A real `create_app` server runs under uvicorn in its own process on a random 127.0.0.1 port, over a
store holding a random-init 4-layer / 128-dim GPT (BPE vocabulary of 512 trained on a little English
and Chinese). Clients are `httpx` async streams of POST /api/generate (NDJSON), each asking for
`--tokens` new tokens (temperature 0.8 and Ollama's other defaults, a seed per request, so every
request takes its own path; `--temperature 0` for greedy).

    python bench/serve_load.py [--clients 16] [--requests 20] [--tokens 32] [--rounds 3] [--temperature 0.8]

Phases: the same model on the Engine directly, no HTTP (1 and 8 streams: what the engine allows the
server); then the server: a warm-up request (loads the model); `--clients` concurrent clients x
`--requests` each (throughput, TTFT and inter-token latency percentiles, errors); `--rounds` rounds
of 1 client and 8 clients (each `--requests` requests per client) for the 8-vs-1 throughput ratio,
interleaved so a busy spell on the shared CPU hits both. Throughput = tokens generated (the
server's eval_count) / wall time of the phase. TTFT = request sent -> first text chunk. Inter-token
latency is reported two ways: per request, time per output token (TPOT = (last chunk - first
chunk) / (tokens - 1)), and the gaps between successive NDJSON chunks of a stream (the stalls a
reader sees; the server forwards whatever tokens are ready every ~2 ms, so at high single-stream
speed two tokens often arrive together and the median gap is near 0).

Ends with one JSON line per metric; ratio > 1 means ours is better (meets the goal when >= 1 for
the goal-shaped metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. 今天天气很好，我们去公园散步吧。你好，世界！The quick brown fox. "
) * 20
PROMPT = "Once upon a time, 在一个小村庄里"
TEMPERATURE = [
    0.8
]  # --temperature; the other options are Ollama's defaults (top_k 40, top_p 0.9, repeat_penalty 1.1)
SERVE = """
import sys, uvicorn
from pocketgpt.serve.api import create_app
from pocketgpt.serve.store import Store
app = create_app(Store(sys.argv[1]), stream_interval=float(sys.argv[3]) if len(sys.argv) > 3 else None)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def build_store(root: Path) -> Path:
    """A store with `bench` = random-init GPT, 4 layers, d_model 128, 4 heads, 256 positions. Its
    tokenizer has no special tokens and its TEMPLATE is the bare prompt, so nothing can stop a
    generation early: every request makes exactly num_predict tokens, in every phase."""
    import torch

    from pocketgpt.config import get_preset
    from pocketgpt.model.checkpoint import build_model, save_model
    from pocketgpt.serve.modelfile import Modelfile
    from pocketgpt.serve.store import Store
    from pocketgpt.text.bpe import Tokenizer

    tok = Tokenizer.train(TEXT, 512, special_tokens=(), progress=False)
    config = get_preset("tiny").replace(
        n_layer=4, d_model=128, n_head=4, vocab_size=tok.vocab_size, block_size=256
    )
    torch.manual_seed(0)
    model_dir = save_model(build_model(config).eval(), root / "model", tokenizer=tok)
    Store(root / "store").create(
        "bench", Modelfile.parse(f'FROM {model_dir}\nTEMPLATE "{{{{ .Prompt }}}}"\n')
    )
    return root / "store"


def start_server(store: Path, stream_interval: float | None = None) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(store), str(port)]
        + ([] if stream_interval is None else [str(stream_interval / 1000)]),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


@dataclass
class Phase:
    """What one load phase measured."""

    clients: int
    wall: float = 0.0
    tokens: int = 0
    errors: int = 0
    ttft: list[float] = field(default_factory=list)  # seconds, one per request
    ttft_later: list[float] = field(default_factory=list)  # the same, without each client's first request
    itl: list[float] = field(default_factory=list)  # seconds, gaps between successive chunks of a stream
    tpot: list[float] = field(default_factory=list)  # per request: (last - first chunk) / (tokens - 1)
    submit: list[float] = field(default_factory=list)  # server side: request in -> submitted (load_duration)
    first: list[float] = field(default_factory=list)  # server side: submitted -> first token (prompt_eval)

    @property
    def throughput(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


async def one_request(client, url: str, options: dict, seed: int, phase: Phase, first: bool) -> None:
    body = {
        "model": "bench",
        "prompt": PROMPT,
        "stream": True,
        "options": {**options, "seed": seed},
    }
    t0 = time.perf_counter()
    start = last = None
    try:
        async with client.stream("POST", f"{url}/api/generate", json=body) as resp:
            if resp.status_code != 200:
                phase.errors += 1
                return
            async for line in resp.aiter_lines():
                if not line:
                    continue
                msg = json.loads(line)
                now = time.perf_counter()
                if "error" in msg:
                    phase.errors += 1
                    return
                if msg.get("response"):
                    if last is None:
                        start = now
                        phase.ttft.append(now - t0)
                        if not first:
                            phase.ttft_later.append(now - t0)
                    else:
                        phase.itl.append(now - last)
                    last = now
                if msg.get("done"):
                    n = int(msg.get("eval_count", 0))
                    phase.tokens += n
                    phase.submit.append(msg.get("load_duration", 0) / 1e9)
                    phase.first.append(msg.get("prompt_eval_duration", 0) / 1e9)
                    if start is not None and n > 1:
                        phase.tpot.append((last - start) / (n - 1))
    except Exception as e:  # noqa: BLE001 (counted: the goal is zero)
        print(f"request error: {type(e).__name__}: {e}", file=sys.stderr)
        phase.errors += 1


async def run_phase(url: str, clients: int, requests: int, options: dict, seed0: int) -> Phase:
    import httpx

    phase = Phase(clients)
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker(c: int) -> None:
            for r in range(requests):
                await one_request(client, url, options, seed0 + c * 1000 + r, phase, first=r == 0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in range(clients)))
        phase.wall = time.perf_counter() - t0
    return phase


def engine_alone(store: Path, options: dict, tokens: int) -> dict[int, float]:
    """The same model and options on the Engine directly (no HTTP): tokens/s with 1 and 8 streams,
    best of 3, so the server's ratio can be read against what the engine itself allows."""
    from pocketgpt.infer.engine import Engine
    from pocketgpt.serve.loaded import load_store_model
    from pocketgpt.serve.store import Store

    loaded = load_store_model(Store(store), "bench")
    ids = loaded.tokenizer.encode(PROMPT)
    out = {}
    for n in (1, 8):
        best = 0.0
        for r in range(3):
            engine = Engine(loaded.model, loaded.tokenizer, max_batch=16, max_len=len(ids) + tokens + 1)
            handles = [
                engine.submit(ids, loaded.sampling({**options, "seed": 7 * r + i}, len(ids)))
                for i in range(n)
            ]
            t0 = time.perf_counter()
            while engine.step():
                pass
            best = max(best, sum(len(h.result().tokens) for h in handles) / (time.perf_counter() - t0))
        out[n] = best
    print(
        f"engine alone (no HTTP): 1 stream {out[1]:.0f} tok/s, 8 streams {out[8]:.0f} tok/s "
        f"({out[8] / out[1]:.2f}x); load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return out


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), in milliseconds."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return 1000 * s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def latency(name: str, loaded: list[float], single: list[float], q: int) -> dict:
    """The q-th percentile of a latency under load against one client's (lower is better)."""
    ours, peer = pct(loaded, q), pct(single, q)
    return line(f"{name}_p{q}_ms", ours, f"1 client p{q}", peer, peer / ours, "lower")


def line(metric: str, ours: float, peer: str, peer_value: float, ratio: float, goal: str) -> dict:
    return {
        "bench": "serve_load",
        "metric": metric,
        "ours": round(ours, 3),
        "peer": peer,
        "peer_value": round(peer_value, 3),
        "ratio": round(ratio, 3),
        "goal": goal,
    }


def main(argv: list[str] | None = None) -> int:
    from pocketgpt.eval.machine import machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--clients", type=int, default=16, help="concurrent clients in the load phase (default 16)"
    )
    ap.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    ap.add_argument("--tokens", type=int, default=32, help="num_predict per request (default 32)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating 1-client / 8-client rounds (default 3)"
    )
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8, Ollama's)")
    args = ap.parse_args(argv)
    options = {"num_predict": args.tokens, "temperature": args.temperature}  # the rest: Ollama's defaults
    print(
        "config:",
        json.dumps(
            {
                "model": "random GPT 4L/128d/4h, vocab 512",
                "clients": args.clients,
                "requests_per_client": args.requests,
                "num_predict": args.tokens,
                "rounds_1_vs_8": args.rounds,
                "options": {
                    "temperature": args.temperature,
                    "top_k": 40,
                    "top_p": 0.9,
                    "repeat_penalty": 1.1,
                },
                "prompt": PROMPT,
                "server": "uvicorn, own process",
            },
            ensure_ascii=False,
        ),
    )
    print("machine:", json.dumps(machine("fastapi", "uvicorn", "httpx")))
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(Path(tmp))
        alone = engine_alone(store, options, args.tokens)  # before the server starts: no contention
        proc, url = start_server(store)
        try:
            # load the model and warm the paths at the load's concurrency: the first batch of each
            # size (1..clients rows, prefill groups) pays one-time kernel set-up, not serving cost
            asyncio.run(run_phase(url, args.clients, 2, options, 0))
            load = asyncio.run(run_phase(url, args.clients, args.requests, options, 10_000))
            report("load", load)
            ones, eights = [], []
            for r in range(args.rounds):
                ones.append(asyncio.run(run_phase(url, 1, args.requests, options, 100_000 * (r + 2))))
                eights.append(
                    asyncio.run(run_phase(url, 8, args.requests, options, 100_000 * (r + 2) + 50_000))
                )
                report(f"round {r + 1}: 1 client", ones[-1])
                report(f"round {r + 1}: 8 clients", eights[-1])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    one = statistics.median(p.throughput for p in ones)
    eight = statistics.median(p.throughput for p in eights)
    single_ttft = [t for p in ones for t in p.ttft]
    single_itl = [t for p in ones for t in p.itl]
    single_tpot = [t for p in ones for t in p.tpot]
    errors = load.errors + sum(p.errors for p in ones + eights)
    print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")
    out = [
        line(
            f"throughput_{args.clients}_clients_tok_s",
            load.throughput,
            "1 client",
            one,
            load.throughput / one,
            "higher",
        ),
        line("throughput_8_streams_vs_1", eight, "1 stream tok/s", one, eight / one, ">= 4.0"),
        line(
            "ttft_p99_ms",
            pct(load.ttft, 99),
            "3 x p50",
            3 * pct(load.ttft, 50),
            3 * pct(load.ttft, 50) / pct(load.ttft, 99),
            ">= 1.0 (p99 <= 3x p50)",
        ),
        latency("ttft", load.ttft, single_ttft, 50),
        latency("tpot", load.tpot, single_tpot, 50),
        latency("tpot", load.tpot, single_tpot, 99),
        latency("itl", load.itl, single_itl, 50),
        latency("itl", load.itl, single_itl, 99),
        line(
            "engine_alone_8_streams_vs_1",
            alone[8],
            "engine alone, 1 stream tok/s",
            alone[1],
            alone[8] / alone[1],
            ">= 4.0 (what the engine allows the server)",
        ),
        line("errors", errors, "none", 0, 1.0 if errors == 0 else 0.0, "0"),
    ]
    for x in out:
        print(json.dumps(x))
    return 0 if errors == 0 else 1


def report(name: str, p: Phase) -> None:
    print(
        f"{name}: {p.clients} client(s), {p.tokens} tokens in {p.wall:.2f} s = {p.throughput:.0f} tok/s; "
        f"TTFT p50 {pct(p.ttft, 50):.1f} ms p99 {pct(p.ttft, 99):.1f} ms "
        f"(without each client's first request: p50 {pct(p.ttft_later, 50):.1f} p99 {pct(p.ttft_later, 99):.1f}); "
        f"time per output token p50 {pct(p.tpot, 50):.2f} ms p99 {pct(p.tpot, 99):.2f} ms; "
        f"chunk gaps p50 {pct(p.itl, 50):.2f} ms p99 {pct(p.itl, 99):.1f} ms; errors {p.errors}; "
        f"server side: request in -> submitted p50 {pct(p.submit, 50):.1f} p99 {pct(p.submit, 99):.1f} ms, "
        f"submitted -> first token p50 {pct(p.first, 50):.1f} p99 {pct(p.first, 99):.1f} ms; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
