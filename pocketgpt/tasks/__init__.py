"""The built-in verifiable tasks: seeded bilingual example generators, each with a scorer.

    arithmetic     word problems with small numbers             answer: "7"
    count_letters  strawberry 里有几个 r                          answer: "3"
    reverse_words  reverse 3-5 words                             answer: "dog tree bird"
    sort_words     sort 3-5 English words                        answer: "bird dog tree"
    extract        person / time / organization (NER)            answer: JSON or "人物: ...; 时间: ...; 机构: ..."
    sentiment      positive / negative (正面 / 负面)              answer: "positive"
    translate      en <-> zh phrase from a 100-pair lexicon      answer: "谢谢"
    json_format    JSON with the given keys                      answer: {"name": "Alice", "age": 30}

One file per task (its templates, `make`, `score`); `task.py` says what a task is and how the
train/test split works; `answers.py` reads answers leniently. This module is the one registry:
SFT data (`pocketgpt data instructions`), eval-tasks and later reward functions all come here.
Knows nothing of models or files.
"""

from __future__ import annotations

from collections.abc import Sequence

from pocketgpt.errors import DataError
from pocketgpt.tasks import arithmetic, extract, json_format, letters, sentiment, translate, words
from pocketgpt.tasks.task import LANGS, Example, Task

TASKS: dict[str, Task] = {t.name: t for t in (
    arithmetic.TASK, letters.TASK, words.REVERSE_TASK, words.SORT_TASK, extract.TASK, sentiment.TASK,
    translate.TASK, json_format.TASK,
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_names(spec: str | Sequence[str] | None) -> list[str]:
    """"a,b" or ["a", "b"] or None (all) -> checked task names, in the given order."""
    if spec is None:
        return list(TASKS)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    for n in names:
        get_task(n)
    if not names:
        raise DataError(f"no tasks named; built-in tasks: {', '.join(TASKS)}")
    return names


def generate(n: int, seed: int = 0, tasks: str | Sequence[str] | None = None, langs: Sequence[str] = LANGS,
             split: str = "train") -> list[Example]:
    """`n` examples in all, the tasks interleaved round-robin (example j is task j % T's (j // T)-th)."""
    names = task_names(tasks)
    per_task = {name: get_task(name).generate(-(-n // len(names)), seed, langs, split) for name in names}
    return [per_task[names[j % len(names)]][j // len(names)] for j in range(n)]


def score(ex: Example, answer: str) -> float:
    """The example's own task grades `answer`: a float in [0, 1]. `ex` may also be a messages-form
    record written by `pocketgpt data instructions --format messages` (its last turn is the reference)."""
    if not isinstance(ex, dict) or ex.get("task") not in TASKS:
        raise DataError(f"cannot score: example has no known 'task' (got {ex.get('task') if isinstance(ex, dict) else ex!r})")
    if "output" not in ex and isinstance(ex.get("messages"), list) and ex["messages"]:
        ex = {**ex, "output": ex["messages"][-1]["content"]}
    return TASKS[ex["task"]].score(ex, answer)
