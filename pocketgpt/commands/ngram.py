"""`pocketgpt ngram`: fit the n-gram baseline on a corpus, show its table, sample, evaluate.

The math is in text/ngram.py; this module reads the corpus, picks the unit, and prints.
"""

from __future__ import annotations

import argparse
import math
import random
from typing import Any

from pocketgpt.commands import add_verb, emit
from pocketgpt.errors import DataError

NEXT_SHOWN = 5  # next units shown per context in the human table
BAR = 30  # width of a probability bar at p = 1


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub,
        "ngram",
        help="the n-gram Markov-chain baseline: count, show the table, generate, perplexity",
        example=(
            "pocketgpt ngram --n 2 --words --corpus notes.txt\n"
            "pocketgpt ngram --n 3 --words --corpus austen --generate 40 --seed 1 --prompt 'It is a truth'\n"
            "pocketgpt ngram --n 3 --corpus tang --add-k 0.01 --eval poems.txt"
        ),
        func=ngram_cmd,
    )
    p.add_argument("--n", type=int, default=2, help="order: predict from the previous n-1 units (default 2)")
    unit = p.add_mutually_exclusive_group()
    unit.add_argument("--words", action="store_true", help="units are words (default: characters)")
    unit.add_argument(
        "--tokenizer", metavar="SPEC", help="units are BPE tokens of this tokenizer (gpt2 or a dir)"
    )
    p.add_argument(
        "--corpus", required=True, metavar="SPEC", help="corpus name (austen, tang, en, zh, ...) or file"
    )
    p.add_argument("--add-k", type=float, default=0.0, metavar="K", help="add-k smoothing (default 0: none)")
    p.add_argument("--generate", type=int, default=0, metavar="K", help="sample K units")
    p.add_argument("--seed", type=int, default=0, help="random seed for --generate (default 0)")
    p.add_argument("--prompt", default="", metavar="TEXT", help="text for --generate to continue")
    p.add_argument("--eval", metavar="SPEC", help="report perplexity on this corpus or file")
    p.add_argument(
        "--top", type=int, metavar="M", help="show the M most frequent contexts (default 10; --json: all)"
    )
    p.add_argument(
        "--errors", choices=("strict", "replace"), default="strict", help="on bytes that are not UTF-8"
    )


def ngram_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.text.corpora import read_corpus
    from pocketgpt.text.ngram import NGramModel, join_units, split_units

    if args.n < 1:
        raise DataError(f"--n must be at least 1, got {args.n}")
    if args.add_k < 0 or args.generate < 0 or (args.top is not None and args.top < 1):
        raise DataError("--add-k and --generate must be >= 0, --top >= 1")
    unit = "token" if args.tokenizer else "word" if args.words else "char"
    tokenizer = _load_tokenizer(args.tokenizer) if args.tokenizer else None
    units = split_units(read_corpus(args.corpus, args.errors), unit, tokenizer)
    if not units:
        raise DataError(f"{args.corpus}: no {unit}s to count; give a corpus with some text")
    model = NGramModel(args.n, args.add_k).fit(units)

    top = args.top if args.top is not None else (None if args.json else 10)
    result: dict[str, Any] = {
        "unit": unit,
        "corpus": str(args.corpus),
        "units": len(units),
        **model.to_json(top),
    }
    if args.generate:
        prompt = split_units(args.prompt, unit, tokenizer, end=False)
        out = model.generate(args.generate, random.Random(args.seed), prompt)
        result["generated"] = join_units(prompt + out, unit, tokenizer)
    if args.eval:
        text = read_corpus(args.eval, args.errors)
        ev = model.perplexity(split_units(text, unit, tokenizer), n_bytes=len(text.encode("utf-8")))
        result["eval"] = {"corpus": str(args.eval), **ev}

    def show(u: Any) -> str:
        if isinstance(u, int):  # a byte-level token may be part of a character: show its bytes
            return _visible(tokenizer.token_bytes(u).decode("utf-8", "backslashreplace"))
        return _visible(u)

    emit(args, _json_safe(result), lambda: _print_human(model, result, top, show))
    return 0


def _load_tokenizer(spec: str) -> Any:
    from pocketgpt.text.bpe import load_tokenizer

    return load_tokenizer(spec)


def _visible(s: str) -> str:
    """Show whitespace units: a space unit is invisible in a table."""
    return s.replace(" ", "␣").replace("\t", "→").replace("\r", "␍") or "∅"


def _json_safe(obj: Any) -> Any:
    """JSON has no infinity: an infinite perplexity is written null (zero_prob_events says why)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_human(model: Any, result: dict, top: int | None, show: Any) -> None:
    s = model.stats()
    print(f"{model.n}-gram model over {result['unit']}s of {result['corpus']} ({result['units']:,} units)")
    print(f"  add-k: {model.add_k:g}" + ("" if model.add_k else " (no smoothing: unseen events have P = 0)"))
    extra = ", <unk>" if model.add_k else ""
    print(
        f"  V (distinct units, </s>{extra} included): {s['vocab_size']:,}   contexts seen: {s['contexts']:,}"
    )
    dense = model.V**model.n
    print(
        f"  cells stored: {s['cells']:,} of a dense V^n = {model.V:,}^{model.n} = {dense:.3g} ({s['cells'] / dense:.2g})"
    )
    print(
        "  a dense table grows as V^n: "
        + ", ".join(f"n={i}: {model.V**i:.3g}" for i in range(1, model.n + 3))
    )
    print()
    for ctx in model.top_contexts(top):
        name = " ".join(show(u) for u in ctx) if ctx else "(no context)"
        print(f"{name}   (seen {model.totals[ctx]:,} times)")
        for u, _ in model.counts[ctx].most_common(NEXT_SHOWN):
            p = model.prob(ctx, u)
            print(f"    {show(u):>12} {p:6.3f} {'█' * max(1, round(p * BAR))}")
        if len(model.counts[ctx]) > NEXT_SHOWN:
            print(f"    {'...':>12} {len(model.counts[ctx]) - NEXT_SHOWN} more")
    if "generated" in result:
        print("\ngenerated:\n" + result["generated"])
    if "eval" in result:
        ev = result["eval"]
        print(
            f"\neval on {ev['corpus']}: {ev['events']:,} predicted units, {ev['oov_units']:,} never seen in training"
        )
        if ev["zero_prob_events"]:
            print(f"  perplexity: inf ({ev['zero_prob_events']:,} events have probability 0; try --add-k)")
        else:
            print(f"  perplexity: {ev['perplexity']:.2f}")
            print(
                f"  cross-entropy: {ev['bits_per_unit']:.3f} bits/unit, {ev['bits_per_byte']:.3f} bits/byte"
            )
