"""`pocketgpt <verb>`: one entry point; thin. Parses arguments, calls a room, prints.

Known errors (`PocketError`) become one line on stderr and exit code 2; `--debug` shows the
traceback instead. Verbs live in `pocketgpt/commands/`, one module per group.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pocketgpt import __version__
from pocketgpt.errors import PocketError

# Verb groups are the modules of pocketgpt/commands/, found automatically (a new verb is a new module
# with `register(sub)`); this list only fixes the order of the recipe in `--help`.
ORDER = ["data", "clean", "tokenizer", "tokenize", "ngram", "train", "finetune", "rlhf", "model", "eval",
         "eval_tasks", "interop", "store", "serve", "transfer"]


def command_modules() -> list[str]:
    """Names of the verb-group modules, in recipe order, then any others alphabetically."""
    import pkgutil

    import pocketgpt.commands as commands

    found = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


EXAMPLES = """\
the recipe, step by step (each takes minutes on a 2-core laptop):
  pocketgpt data fetch                                   the default corpora (Austen, People's Daily, Tang poems)
  pocketgpt tokenizer show --tokenizer gpt2 "strawberry 里有几个 r"
  pocketgpt pretrain --preset tiny --out runs/tiny        clean, tokenize, train (<= 5 min)
  pocketgpt generate runs/tiny "It is a truth" --max-tokens 40
  pocketgpt sft runs/tiny --data builtin --out runs/tiny-sft
  pocketgpt eval-tasks runs/tiny-sft
  pocketgpt data preferences --model runs/tiny-sft --out prefs.jsonl
  pocketgpt reward runs/tiny-sft --data prefs.jsonl --out runs/tiny-rm
  pocketgpt ppo --policy runs/tiny-sft --reward runs/tiny-rm --out runs/tiny-ppo
  pocketgpt create tiny-chat --from runs/tiny-ppo && pocketgpt run tiny-chat
  pocketgpt serve                                        Ollama (/api) and OpenAI (/v1) APIs on :11434
run `pocketgpt VERB --help` for a verb's options and an example."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pocketgpt",
        description="The whole ChatGPT recipe, small and readable: tokenizer -> GPT -> SFT -> RLHF -> serve.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pocketgpt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in command_modules():
        importlib.import_module(f"pocketgpt.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except PocketError as e:
        if args.debug:
            raise
        print(f"pocketgpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pocketgpt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pocketgpt ... | head` is fine
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    raise SystemExit(main())
