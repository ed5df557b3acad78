"""Where pocketgpt keeps its files: `$POCKETGPT_HOME` (default `~/.pocketgpt`).

    $POCKETGPT_HOME/data/      default corpora built by `pocketgpt data fetch`
    $POCKETGPT_HOME/models/    the model store (manifests + blobs)

Knows only paths; never creates or reads anything but the directories themselves.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """The root of pocketgpt's cache and store."""
    return Path(os.environ.get("POCKETGPT_HOME") or Path.home() / ".pocketgpt").expanduser()


def data_dir() -> Path:
    """Where the default corpora live (`pocketgpt data fetch` fills it)."""
    return home_dir() / "data"
