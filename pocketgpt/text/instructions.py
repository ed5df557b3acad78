"""Instruction data on disk: JSONL in Alpaca form or messages form -> conversations, and back.

One record per line, either form, mixed freely:

    {"instruction": "How many r's are in strawberry?", "input": "", "output": "3"}         Alpaca
    {"system": "Be brief.", "instruction": "...", "output": "..."}                          (system optional)
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]}

Other keys ("task", "lang", "meta" from the built-in tasks) ride along untouched. A bad line is
reported as `file:line: what is wrong`; `on_error="fail"` stops at the first one, "skip" keeps
going and returns every problem so the caller can print them (never dropped silently). Blank
lines are not records. Knows nothing of tokens: text/chat.py turns a conversation into ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketgpt.atomic import atomic_path
from pocketgpt.errors import DataError
from pocketgpt.text.chat import check_messages

FORMATS = ("alpaca", "messages")
ON_ERROR = ("skip", "fail")

Conversation = list[dict[str, str]]


@dataclass
class InstructionData:
    """What a file held: one conversation per good line (and the line's full record), plus the
    `file:line: reason` of each skipped line."""

    conversations: list[Conversation] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_instructions(path: str | os.PathLike, on_error: str = "fail") -> InstructionData:
    """Read a JSONL file of Alpaca and/or messages records. Raises DataError on the first bad line
    (on_error="fail"), or when no good record is left."""
    if on_error not in ON_ERROR:
        raise DataError(f"unknown --on-error {on_error!r}; use skip or fail")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; make one with `pocketgpt data instructions --out {path}`")
    out = InstructionData()
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = _parse_line(raw)
                if record is None:
                    continue
                conversation = to_messages(record)
            except DataError as e:
                problem = f"{path}:{number}: {e}"
                if on_error == "fail":
                    raise DataError(f"{problem} (pass --on-error skip to skip bad lines)") from None
                out.problems.append(problem)
                continue
            out.conversations.append(conversation)
            out.records.append(record)
    if not out.conversations:
        raise DataError(f"{path}: no usable records ({len(out.problems)} bad lines); "
                        "each line needs 'instruction' + 'output', or 'messages'")
    return out


def to_messages(record: Mapping[str, Any]) -> Conversation:
    """One record (Alpaca or messages form) -> [{"role", "content"}, ...] ending with the assistant's
    answer. The Alpaca user turn is the instruction, then a blank line and the input when there is one."""
    if "messages" in record:
        messages = check_messages(record["messages"]) if isinstance(record["messages"], list) else None
        if messages is None:
            raise DataError("'messages' must be a list of {'role', 'content'} objects")
        if not any(role == "assistant" for role, _ in messages):
            raise DataError("the conversation has no assistant message, so there is nothing to learn")
        return [{"role": r, "content": c} for r, c in messages]
    if "instruction" not in record or "output" not in record:
        raise DataError("expected 'instruction' and 'output' (Alpaca form) or 'messages'; "
                        f"got keys {', '.join(sorted(record)) or '(none)'}")
    for key in ("instruction", "input", "output", "system"):
        if key in record and not isinstance(record[key], str):
            raise DataError(f"'{key}' must be a string, got {type(record[key]).__name__}")
    if not record["instruction"].strip():
        raise DataError("'instruction' is empty")
    return [*([{"role": "system", "content": record["system"]}] if record.get("system") else []),
            {"role": "user", "content": user_text(record)},
            {"role": "assistant", "content": record["output"]}]


def user_text(record: Mapping[str, Any]) -> str:
    """What the user says for an Alpaca record (or a built-in task example): instruction [+ input]."""
    return record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")


def to_record(example: Mapping[str, Any], format: str) -> dict[str, Any]:
    """A built-in task example as one JSONL record: Alpaca keeps it as is (task, lang, meta
    included), messages replaces instruction/input/output with the conversation."""
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}; use alpaca or messages")
    if format == "alpaca":
        return dict(example)
    rest = {k: v for k, v in example.items() if k not in ("instruction", "input", "output")}
    return {"messages": to_messages(example), **rest}


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records one per line (UTF-8, Chinese unescaped), atomically; returns how many."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """A line's JSON object, None for a blank line, DataError for anything else."""
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
