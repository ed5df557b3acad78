"""The CLI's verbs, one module per group of verbs (`data`, `tokenizer`, `ngram`, ...).

Each module has `register(sub)` that adds its verbs to the top-level subparsers. A verb's
handler takes the parsed `argparse.Namespace`, calls library functions, prints, and returns an
exit code. No verb contains the math: that lives in the rooms (text/, model/, train/, ...).
Keep module imports light (torch is imported inside handlers) so `pocketgpt --help` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], "int | None"]


def add_verb(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    example: str,
    func: Handler,
    description: str | None = None,
    json_flag: bool = True,
) -> argparse.ArgumentParser:
    """Add one verb with a help line, an example in its `--help`, and (by default) `--json`."""
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog="example:\n  " + example.strip().replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=func)
    return p


def add_group(sub: argparse._SubParsersAction, name: str, *, help: str, example: str) -> argparse._SubParsersAction:
    """Add a verb that has sub-verbs (`pocketgpt tokenizer encode`); returns their subparsers."""
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog="example:\n  " + example.strip().replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    return p.add_subparsers(dest=f"{name}_verb", metavar="VERB")


def emit(args: argparse.Namespace, obj: Any, human: Callable[[], None] | str | None = None) -> None:
    """Print a result: JSON when `--json` was given, else the human view (a callable or text)."""
    if getattr(args, "json", False):
        json.dump(obj, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif callable(human):
        human()
    elif human is not None:
        print(human)
    else:
        print(json.dumps(obj, ensure_ascii=False, indent=2))


def run_summary(result: Any, **fields: Any) -> dict[str, Any]:
    """What every training verb reports first (a `train.loop.TrainResult`): where the model went, how
    many steps ran and why it stopped; then the verb's own `fields`."""
    return {"out": str(result.out_dir), "steps": result.steps, "stopped": result.stopped, **fields}


def print_task_accuracy(result: dict | None) -> None:
    """The per-task lines of an `eval.tasks.evaluate_tasks` result, then the overall one (nothing for None)."""
    if not result:
        return
    for row in result["tasks"]:
        print(f"  {row['task']:<14} {100 * row['accuracy']:5.1f}%")
    print(f"  {'overall':<14} {100 * result['overall']:5.1f}%")
