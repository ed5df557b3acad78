"""Reading the user's text files: strict UTF-8 with the failing byte offset in the error, or
an explicit `errors="replace"`. An empty file is an error, never a silent empty corpus.

Knows nothing of named corpora (see corpora.py) or tokens.
"""

from __future__ import annotations

import os
from pathlib import Path

from pocketgpt.errors import DataError

ERRORS = ("strict", "replace")


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """The whole file as text. Raises DataError naming the file and what is wrong with it."""
    path = Path(path)
    if errors not in ERRORS:
        raise DataError(f"unknown --errors mode {errors!r}; use one of {', '.join(ERRORS)}")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a UTF-8 text file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (byte 0x{raw[e.start]:02x}); "
            "convert it to UTF-8 or pass --errors replace"
        ) from None
    if text.startswith("\ufeff"):  # a BOM is an encoding marker, not text
        text = text[1:]
    if not text.strip():
        raise DataError(f"{path}: the file is empty (no text to learn from)")
    return text
