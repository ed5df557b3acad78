"""`pocketgpt eval`: loss, perplexity and bits per byte of models on a text, one row per model.

A MODEL is a model directory, or an n-gram baseline fitted on the spot:

    ngram:N[:char|:word][:add-k=K]@TRAIN      e.g. ngram:3:word:add-k=0.01@austen

so the neural models and the baseline they must beat share one table. Only bits per byte
compares across rows (perplexity is per unit, and units differ). The math is in eval/perplexity.py.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from pocketgpt.commands import add_verb, emit
from pocketgpt.errors import ConfigMismatch, DataError, TokenizerError

NGRAM_SYNTAX = "ngram:N[:char|:word][:add-k=K]@TRAIN"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub,
        "eval",
        help="loss, perplexity and bits per byte of models (and n-gram baselines) on a text",
        example=(
            "pocketgpt eval runs/tiny/ --data held_out.txt\n"
            "pocketgpt eval runs/tiny/ ngram:3:add-k=0.01@austen --data tang --max-tokens 20000 --json"
        ),
        func=cmd_eval,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=f"a model directory, or {NGRAM_SYNTAX}")
    p.add_argument("--data", required=True, metavar="FILE|CORPUS", help="the text to score: a file or corpus name")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score only the text's first N tokens (of the first model's tokenizer; characters "
                        "if only n-grams), the same text for every row")
    p.add_argument("--stride", type=int, default=None,
                   help="sliding-window step in tokens (default block_size/2; 1 = full context, slowest)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help="on bytes that are not UTF-8")


def cmd_eval(args: argparse.Namespace) -> int:
    from pocketgpt.text.corpora import read_corpus

    if (args.max_tokens is not None and args.max_tokens < 1) or args.batch_size < 1 or (args.stride or 1) < 1:
        raise DataError("--max-tokens, --stride and --batch-size must be positive")
    loaded = [_load(spec, args.errors) for spec in args.models]
    text = read_corpus(args.data, args.errors)
    if args.max_tokens is not None:
        text = _cut(text, args.max_tokens, next((m[2] for m in loaded if m[0] == "gpt"), None))
    rows = [_evaluate(spec, m, text, args) for spec, m in zip(args.models, loaded, strict=True)]
    result = {"data": str(args.data), "bytes": len(text.encode("utf-8")), "rows": rows}
    emit(args, _json_safe(result), lambda: _print_table(result))
    return 0


def _load(spec: str, errors: str) -> tuple[str, Any, Any]:
    """("gpt", model, tokenizer) for a model directory, ("ngram", model, unit) for an n-gram spec."""
    if spec.startswith("ngram:"):
        return ("ngram", *_fit_ngram(spec, errors))
    from pocketgpt.model.checkpoint import load_config, load_model

    if load_config(spec).arch != "gpt":
        raise ConfigMismatch(f"{spec}: eval scores decoder-only (gpt) models; this one is {load_config(spec).arch}")
    model, tok = load_model(spec)
    if tok is None:
        raise TokenizerError(f"{spec}: no tokenizer files in the model directory; save the model with its tokenizer")
    return "gpt", model, tok


def parse_ngram_spec(spec: str) -> tuple[int, str, float, str]:
    """'ngram:3:word:add-k=0.01@austen' -> (3, "word", 0.01, "austen")."""
    head, sep, train = spec.partition("@")
    parts = head.split(":")[1:]
    if not sep or not train or not parts:
        raise DataError(f"{spec!r}: an n-gram model is written {NGRAM_SYNTAX}, e.g. ngram:3:add-k=0.01@austen")
    unit, add_k = "char", 0.0
    try:
        n = int(parts[0])
        for part in parts[1:]:
            if part in ("char", "word"):
                unit = part
            elif part.startswith("add-k="):
                add_k = float(part.removeprefix("add-k="))
            else:
                raise ValueError(part)
    except ValueError as e:
        raise DataError(f"{spec!r}: cannot read {e}; write {NGRAM_SYNTAX}") from None
    if n < 1 or add_k < 0:
        raise DataError(f"{spec!r}: N must be >= 1 and add-k >= 0")
    return n, unit, add_k, train


def _fit_ngram(spec: str, errors: str) -> tuple[Any, str]:
    from pocketgpt.text.corpora import read_corpus
    from pocketgpt.text.ngram import NGramModel, split_units

    n, unit, add_k, train = parse_ngram_spec(spec)
    units = split_units(read_corpus(train, errors), unit)
    if not units:
        raise DataError(f"{train}: no text to fit {spec} on")
    return NGramModel(n, add_k).fit(units), unit


def _cut(text: str, n: int, tokenizer: Any) -> str:
    """The text of the first n tokens (cut at a character boundary), or n characters."""
    if tokenizer is None:
        return text[:n]
    ids = tokenizer.encode(text, allowed_special="none")[:n]
    return tokenizer.decode_bytes(ids).decode("utf-8", errors="ignore")  # drops a split last character


def _evaluate(spec: str, loaded: tuple[str, Any, Any], text: str, args: argparse.Namespace) -> dict:
    from pocketgpt.eval.perplexity import evaluate_lm, evaluate_ngram

    kind, model, extra = loaded
    if kind == "ngram":
        return {"model": spec, "kind": "ngram", "unit": extra, **evaluate_ngram(model, text, extra)}
    if args.stride is not None and args.stride > model.config.block_size:
        raise DataError(f"--stride {args.stride} exceeds {spec}'s block size {model.config.block_size}")
    row = evaluate_lm(model, extra, text, stride=args.stride, batch_size=args.batch_size)
    return {"model": str(Path(spec)), "kind": "gpt", "unit": "token", **row}


def _json_safe(obj: Any) -> Any:
    """JSON has no infinity or NaN: such a value is written null (zero_prob_events says why)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"eval on {result['data']} ({result['bytes']:,} bytes)")
    for name in ("model", "unit", "units scored", "loss (nats)", "perplexity", "bits/byte"):
        table.add_column(name, justify="left" if name in ("model", "unit") else "right",
                         overflow="fold", min_width=24 if name == "model" else None)
    for r in result["rows"]:
        table.add_row(r["model"], r["unit"], f"{r['tokens']:,}", _num(r["loss"]), _num(r["perplexity"], 2),
                      _num(r["bits_per_byte"]))
    Console().print(table)
    if any(r.get("zero_prob_events") for r in result["rows"]):
        print("inf: the n-gram model gave some event probability 0; add smoothing, e.g. :add-k=0.01")
    print("only bits/byte compares across rows: perplexity is per unit (token, character or word)")


def _num(x: float | None, digits: int = 4) -> str:
    return "inf" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
