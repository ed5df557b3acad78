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
    splits = meta["splits"].values()
    total, text_bytes = sum(s["n_tokens"] for s in splits), sum(s["text_bytes"] for s in splits)
    disk = sum((Path(args.out) / f["file"]).stat().st_size for s in splits for f in s["shards"])
    meta_out = {**meta, "out": str(args.out), "seconds": round(seconds, 2),
                "tokens_per_s": round(total / max(seconds, 1e-9)),
                "bytes_per_token": round(text_bytes / max(total, 1), 3), "disk_bytes": disk}

    def human() -> None:
        for split, s in meta["splits"].items():
            files = ", ".join(f["file"] for f in s["shards"][:3]) + (", ..." if len(s["shards"]) > 3 else "")
            print(f"{split:>5}: {s['n_tokens']:>12,} tokens  {s['n_docs']:>8,} documents  "
                  f"{s['text_bytes'] / max(s['n_tokens'], 1):.2f} bytes/token  {files}")
        print(f"{meta['dtype']}, vocab {meta['vocab_size']:,}, {disk / 1e6:.1f} MB of shards, "
              f"{meta_out['tokens_per_s']:,} tokens/s ({seconds:.1f} s) -> {args.out}")
    emit(args, meta_out, human)
    return 0
