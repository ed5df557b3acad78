"""Preference data on disk: which of two answers to the same prompt is better, as JSONL.

Two record forms, mixed freely, one per line:

    {"prompt": "3 + 4 = ?", "chosen": "7", "rejected": "8"}                          a pair
    {"prompt": "...", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}            a ranking of K answers

`ranking` lists indices into `responses`, best first (here c > a > b). A ranking of K answers is
all K(K-1)/2 pairs it implies, as InstructGPT trained its reward model (Ouyang et al. 2022, sec.
3.5): every better answer against every worse one. `prompt` is the user's message (a string) or a
conversation so far (a list of {"role", "content"} messages ending before the answer). Other keys
("task", "lang", "meta") ride along. A bad line is `file:line: what is wrong`; `on_error="fail"`
stops at it, "skip" collects it in `problems` (never dropped silently).

`rank_responses` orders sampled answers by the built-in task scorers (correctness first, then the
format rules), so the pipeline has preference data without people.
Knows nothing of tokens or models: the reward / DPO stages encode the pairs with the chat template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketgpt.errors import DataError

ON_ERROR = ("skip", "fail")
Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class Pair:
    """One comparison: `chosen` was preferred to `rejected` as the answer to `prompt`."""

    prompt: Prompt
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def messages(self, answer: str) -> list[dict[str, str]]:
        """The conversation prompt + `answer` as the assistant's turn (for the chat template)."""
        return [*prompt_messages(self.prompt), {"role": "assistant", "content": answer}]


@dataclass
class PreferenceData:
    """What a file held: the pairs of every good line, how many records gave them, and the
    `file:line: reason` of each skipped line."""

    pairs: list[Pair] = field(default_factory=list)
    records: int = 0
    problems: list[str] = field(default_factory=list)


# -- records -> pairs -----------------------------------------------------------------------------
def record_pairs(record: Mapping[str, Any]) -> list[Pair]:
    """One record (pair or ranking form) -> its pairs; DataError naming what is wrong."""
    if not isinstance(record, Mapping):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    prompt = _prompt(record)
    meta = {
        k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected", "responses", "ranking")
    }
    if "chosen" in record or "rejected" in record:
        chosen, rejected = _text(record, "chosen"), _text(record, "rejected")
        return [Pair(prompt, chosen, rejected, meta)]
    if "responses" in record:
        return ranking_pairs(prompt, record["responses"], record.get("ranking"), meta)
    raise DataError("a record needs 'chosen' + 'rejected', or 'responses' + 'ranking'")


def ranking_pairs(
    prompt: Prompt,
    responses: Sequence[str],
    ranking: Sequence[int] | None,
    meta: Mapping[str, Any] | None = None,
) -> list[Pair]:
    """K responses ranked best first -> the K(K-1)/2 pairs (better, worse), in ranking order."""
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise DataError("'responses' must be a list of strings")
    K = len(responses)
    if K < 2:
        raise DataError(f"'responses' has {K} answer(s); a ranking needs at least 2")
    if (
        not isinstance(ranking, list)
        or sorted(ranking) != list(range(K))
        or any(type(i) is not int for i in ranking)
    ):
        raise DataError(
            f"'ranking' must list each index 0..{K - 1} of 'responses' once, best first (got {ranking!r})"
        )
    return [
        Pair(prompt, responses[ranking[i]], responses[ranking[j]], dict(meta or {}))
        for i in range(K)
        for j in range(i + 1, K)
    ]


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """A prompt as chat messages: a string is one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


# -- files ----------------------------------------------------------------------------------------
def read_preferences(path: str | os.PathLike, on_error: str = "fail") -> PreferenceData:
    """Read a preference JSONL file. Raises DataError at the first bad line (on_error="fail") or
    when no pair is left."""
    if on_error not in ON_ERROR:
        raise DataError(f"unknown --on-error {on_error!r}; use skip or fail")
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; make one with `pocketgpt data preferences --model SFT_MODEL --out {path}`"
        )
    out = PreferenceData()
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = _parse_line(raw)
                if record is None:
                    continue
                pairs = record_pairs(record)
            except DataError as e:
                problem = f"{path}:{number}: {e}"
                if on_error == "fail":
                    raise DataError(f"{problem} (pass --on-error skip to skip bad lines)") from None
                out.problems.append(problem)
                continue
            out.pairs += pairs
            out.records += 1
    if not out.pairs:
        raise DataError(
            f"{path}: no usable records ({len(out.problems)} bad lines); each line needs "
            "'prompt' with 'chosen' + 'rejected', or with 'responses' + 'ranking'"
        )
    return out


def write_preferences(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records one per line (UTF-8, Chinese unescaped), atomically; returns how many."""
    from pocketgpt.atomic import atomic_path

    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


# -- ranking sampled answers without people ----------------------------------------------------------
def rank_responses(example: Mapping[str, Any], responses: Sequence[str]) -> list[int]:
    """Indices of `responses` best first, by the example's task scorer (correctness first), then
    the format rules: a non-empty answer beats an empty one, then the length closer to the
    reference's, then the earlier sample (a stable order)."""
    return sorted(range(len(responses)), key=lambda i: (*rule_key(example, responses[i]), i))


def rule_key(example: Mapping[str, Any], answer: str) -> tuple[float, int, int]:
    """What the ranking rules see of one answer, smaller is better: (-task score, empty?, distance of
    its length from the reference's). Two answers with the same key tie under the rules."""
    from pocketgpt import tasks

    answer = answer.strip()
    return (
        -tasks.score(dict(example), answer),
        int(not answer),
        abs(len(answer) - len(str(example.get("output", "")))),
    )


def _prompt(record: Mapping[str, Any]) -> Prompt:
    if "prompt" not in record:
        raise DataError("missing 'prompt'")
    p = record["prompt"]
    if isinstance(p, str):
        if not p.strip():
            raise DataError("'prompt' is empty")
        return p
    if (
        isinstance(p, list)
        and p
        and all(
            isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and m.get("role") in ("system", "user", "assistant", "tool")
            for m in p
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in p]
    raise DataError("'prompt' must be a string or a list of {role, content} messages")


def _text(record: Mapping[str, Any], key: str) -> str:
    if not isinstance(record.get(key), str):
        raise DataError(f"'{key}' must be a string (got {type(record.get(key)).__name__})")
    return record[key]


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 (byte {e.start} of the line)") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    return record
