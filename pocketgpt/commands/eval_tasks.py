"""`pocketgpt eval-tasks MODEL`: accuracy on the built-in verifiable tasks, one row per task.

Held-out examples (unseen instruction templates), the model's chat template, greedy answers from
the Engine, each task's own scorer. The work is in eval/tasks.py; this file parses and prints.
"""

from __future__ import annotations

import argparse

from pocketgpt.commands import add_verb, emit
from pocketgpt.errors import ConfigMismatch, TokenizerError


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub,
        "eval-tasks",
        help="accuracy per built-in task (arithmetic, count_letters, ..., json_format) with greedy answers",
        example=("pocketgpt eval-tasks runs/sft/ --n 50\n"
                 "pocketgpt eval-tasks runs/base/ --tasks arithmetic,translate --lang zh --json"),
        func=cmd_eval_tasks,
    )
    p.add_argument("model", metavar="MODEL", help="a model directory with tokenizer files (base, SFT or adapter)")
    p.add_argument("--n", type=int, default=50, help="examples per task (default 50)")
    p.add_argument("--tasks", default=None, metavar="A,B", help="built-in task names (default: all)")
    p.add_argument("--lang", default="en,zh", metavar="en,zh", help="languages, alternating (default en,zh)")
    p.add_argument("--seed", type=int, default=0, help="which held-out examples (default 0)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: held-out templates (default); train: the training distribution")
    p.add_argument("--template", choices=("pocketgpt", "chatml", "plain"), default=None,
                   help="chat template (default: the one the tokenizer has tokens for)")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message before every question")
    p.add_argument("--max-tokens", type=int, default=64, help="longest answer in tokens (default 64)")
    p.add_argument("--batch", type=int, default=16, help="requests decoded together (default 16)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--samples", type=int, default=2, help="example answers shown per task (default 2)")


def cmd_eval_tasks(args: argparse.Namespace) -> int:
    import torch

    from pocketgpt.eval.tasks import evaluate_tasks

    if args.n < 1 or args.max_tokens < 1 or args.batch < 1:
        raise ConfigMismatch("--n, --max-tokens and --batch must be positive")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = _load(args.model, device)
    result = evaluate_tasks(model, tok, task_names=args.tasks, n=args.n, seed=args.seed,
                            langs=args.lang.split(","), split=args.split, max_tokens=args.max_tokens,
                            template=args.template, max_batch=args.batch, keep_samples=args.samples,
                            system=args.system)
    result["model"] = str(args.model)
    emit(args, result, lambda: _print(result))
    return 0


def _load(model_dir: str, device: str):
    """(model, tokenizer) of a model directory; an adapter directory (adapter.json) comes back with
    its adapter applied (model/checkpoint.load_model)."""
    from pocketgpt.model.checkpoint import load_config, load_model
    from pocketgpt.model.peft import has_adapter

    if not has_adapter(model_dir) and load_config(model_dir).arch != "gpt":
        raise ConfigMismatch(f"{model_dir}: eval-tasks generates with decoder-only (gpt) models; "
                             f"this one is {load_config(model_dir).arch}")
    model, tok = load_model(model_dir, device=device)
    if tok is None:
        raise TokenizerError(f"{model_dir}: no tokenizer files in the model directory; eval-tasks needs text. "
                             "Save the model with its tokenizer (save_model(model, dir, tokenizer))")
    return model, tok


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{result['model']}: built-in tasks ({result['split']} split, template "
                        f"{result['template']}, {result['n']} per task, seed {result['seed']})")
    for name in ("task", "n", "accuracy", "exact", "en", "zh"):
        table.add_column(name, justify="left" if name == "task" else "right")
    for r in result["tasks"]:
        table.add_row(r["task"], str(r["n"]), f"{r['accuracy']:.1%}", f"{r['exact']:.1%}",
                      *(f"{r['by_lang'][g]:.1%}" if g in r["by_lang"] else "-" for g in ("en", "zh")))
    table.add_row("overall", str(sum(r["n"] for r in result["tasks"])), f"{result['overall']:.1%}", "", "", "",
                  end_section=True)
    console = Console()
    console.print(table)
    if result["too_long"]:
        console.print(f"{result['too_long']} prompts did not fit the model's context and scored 0")
    for s in result["samples"]:
        console.print(f"[dim]{s['task']} ({s['lang']}, score {s['score']:.2f})[/dim] "
                      + escape(f"{s['prompt']!r} -> {s['answer']!r} (want {s['reference']!r})"), highlight=False)
