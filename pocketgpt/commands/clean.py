"""`pocketgpt clean IN... --out DIR`: normalise, filter and deduplicate a corpus, with a report.

The pipeline and its rules live in text/clean.py; this module turns flags into a CleanConfig,
corpus names into files, and prints the report.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pocketgpt.commands import add_verb, emit


def register(sub: argparse._SubParsersAction) -> None:
    from pocketgpt.text.clean import RULES, CleanConfig

    p = add_verb(
        sub,
        "clean",
        help="clean a corpus: normalise, drop spam / low-quality text, exact and near duplicates",
        example=(
            "pocketgpt clean default --out cleaned/\n"
            "pocketgpt clean crawl.txt --doc-per-line --near-threshold 0.7 --out cleaned/ --json"
        ),
        func=clean_cmd,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IN", help="files, or corpus names (austen, zh, default, ...)"
    )
    p.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="writes cleaned.txt, report.json, report.md"
    )
    p.add_argument(
        "--doc-per-line", action="store_true", help="one document per line (default: blank-line paragraphs)"
    )
    p.add_argument(
        "--errors", choices=("strict", "replace"), default="strict", help="on bytes that are not UTF-8"
    )
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=RULES,
        metavar="RULE",
        help=f"turn rules off: {', '.join(RULES)}",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in dataclasses.fields(CleanConfig):
        if "help" in f.metadata:  # every threshold is a flag, its default from the dataclass
            flag = "--" + f.name.replace("_", "-")
            metavar = "N" if isinstance(f.default, int) else "X"
            p.add_argument(
                flag,
                type=type(f.default),
                default=f.default,
                metavar=metavar,
                help=f"{f.metadata['help']} (default {f.default})",
            )


def clean_cmd(args: argparse.Namespace) -> int:
    from pocketgpt.text.clean import CleanConfig, clean_corpus

    thresholds = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(CleanConfig) if "help" in f.metadata
    }
    cfg = CleanConfig(**thresholds, doc_per_line=args.doc_per_line, errors=args.errors, skip=tuple(args.skip))
    report = clean_corpus(
        _input_paths(args.inputs), args.out, cfg, progress=not (args.no_progress or args.json)
    )
    emit(args, report, lambda: _show(report))
    return 0


def _input_paths(specs: list[str]) -> list[Path]:
    """Corpus names and aliases become their cache files (fetched if missing); the rest are files."""
    from pocketgpt.text.corpora import ALIASES, CORPORA, corpus_paths

    paths: list[Path] = []
    for spec in specs:
        paths += corpus_paths(spec) if spec in CORPORA or spec in ALIASES else [Path(spec)]
    return paths


def _show(report: dict) -> None:
    n = max(1, report["docs_in"])
    print(
        f"documents in {report['docs_in']}, kept {report['docs_kept']} ({100 * report['docs_kept'] / n:.1f}%)"
        f" in {report['seconds']} s ({report['docs_per_s']} docs/s)"
    )
    for rule, count in report["dropped"].items():
        if count:
            first = report["examples"][rule][0]
            print(f"  {rule:<16} {count:>7}  e.g. {first['where']}: {first['why']}")
    out = Path(report["output"]).parent
    print(f"wrote {out / 'cleaned.txt'}, {out / 'report.json'}, {out / 'report.md'}")
