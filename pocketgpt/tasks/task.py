"""What a built-in task is: a seeded example generator plus a scorer, and the train/test split rule.

An example is a plain dict (it goes straight into JSONL):

    {"task": "arithmetic", "lang": "zh", "instruction": "...", "input": "...", "output": "7", "meta": {...}}

`instruction` + `input` is what the user says, `output` is the reference answer and always scores 1.0.
Held-out prompts differ from training prompts twice over: each task's instruction templates are split
(the last quarter, at least one, per language are test-only) and test examples draw from another
seed stream. Every example has its own `random.Random`, seeded from (task, split, seed, index), so
`generate(10)` is a prefix of `generate(100)` and nothing depends on global random state.
Knows nothing of models, tokens or files.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pocketgpt.errors import DataError

LANGS = ("en", "zh")
SPLITS = ("train", "test")

Example = dict[str, Any]
Maker = Callable[[random.Random, str, str], Example]  # (rng, lang, split) -> example
Scorer = Callable[[Example, str], float]  # (example, model answer) -> score in [0, 1]


@dataclass(frozen=True)
class Task:
    """One verifiable task: `make` draws an example, `score` grades an answer against it."""

    name: str
    description: str
    make: Maker
    score: Scorer

    def generate(self, n: int, seed: int = 0, langs: Sequence[str] = LANGS, split: str = "train") -> list[Example]:
        """`n` examples; example i is in `langs[i % len(langs)]`, drawn with its own seeded generator."""
        langs = check_langs(langs)
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use train or test")
        if n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        return [self.make(random.Random(f"{self.name}/{split}/{seed}/{i}"), langs[i % len(langs)], split)
                for i in range(n)]


def check_langs(langs: Sequence[str]) -> tuple[str, ...]:
    langs = tuple(langs)
    bad = [x for x in langs if x not in LANGS]
    if bad or not langs:
        raise DataError(f"unknown language {bad[0] if bad else ''!r}; use en, zh or en,zh")
    return langs


def templates_for(templates: Sequence[str], split: str) -> Sequence[str]:
    """The templates a split may use: test gets the last quarter (at least one), train the rest."""
    if len(templates) < 2:
        raise ValueError("a task needs at least two templates per language to hold one out")
    k = max(1, len(templates) // 4)
    return templates[-k:] if split == "test" else templates[:-k]


def example(task: str, lang: str, instruction: str, input: str, output: str, **meta: Any) -> Example:
    """The one shape every task returns."""
    return {"task": task, "lang": lang, "instruction": instruction, "input": input, "output": output, "meta": meta}
