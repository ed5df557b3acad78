"""`pocketgpt tokenize`: turn a corpus into token shards (text/shards.py) that training memory-maps.

Thin: parse, load the tokenizer, call `write_shards`, print per-split counts and the speed.
"""

from __future__ import annotations

import argparse
import time

from pocketgpt.commands import add_verb, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(sub, "tokenize", help="tokenize a corpus into uint16/uint32 memmap shards with a train/val split",
                 example="pocketgpt tokenize --tokenizer runs/tok --out shards/ out/clean/\n"
                         "pocketgpt tokenize --tokenizer gpt2 --out shards-gpt2/ --dtype uint16 austen.txt\n"
                         "pocketgpt tokenize --tokenizer runs/tok --out shards/            # the default corpora",
                 func=cmd_tokenize)
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="text files, directories of .txt, `pocketgpt clean` dirs or corpus names (default: default)")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory, or gpt2")
    p.add_argument("--out", required=True, metavar="DIR", help="the shards directory to write")
    p.add_argument("--val-fraction", type=float, default=0.005, help="share of documents held out (default 0.005)")
    p.add_argument("--dtype", default="auto", choices=("auto", "uint16", "uint32"),
                   help="token id type on disk (auto: uint16 when the vocabulary fits)")
    p.add_argument("--shard-tokens", type=int, default=2**24, help="tokens per shard file (default 16M)")
    p.add_argument("--processes", type=int, default=None, help="tokenizer processes (default 2)")


def cmd_tokenize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pocketgpt.text.bpe import load_tokenizer
    from pocketgpt.text.shards import write_shards

    tok = load_tokenizer(args.tokenizer)
    t0 = time.perf_counter()
    meta = write_shards(args.sources or ["default"], tok, args.out, val_fraction=args.val_fraction, dtype=args.dtype,
                        shard_tokens=args.shard_tokens, processes=args.processes, progress=not args.json)
    seconds = time.perf_counter() - t0
    total = sum(s["n_tokens"] for s in meta["splits"].values())
    n_bytes = sum((Path(args.out) / f["file"]).stat().st_size for s in meta["splits"].values() for f in s["shards"])
    meta_out = {**meta, "seconds": round(seconds, 2), "tokens_per_s": round(total / max(seconds, 1e-9))}

    def human() -> None:
        for split, s in meta["splits"].items():
            print(f"{split:>5}: {s['n_tokens']:>12,} tokens  {s['n_docs']:>8,} documents  {len(s['shards'])} shard(s)")
        print(f"{meta['dtype']}, vocab {meta['vocab_size']}, {n_bytes / 1e6:.1f} MB on disk, "
              f"{total / max(seconds, 1e-9):,.0f} tokens/s -> {args.out}")
    emit(args, meta_out, human)
    return 0
