"""Shared test setup.

All tests share one pocketgpt home (`.cache/test-home` in the repo, git-ignored) so the default
corpora are fetched once per machine, not once per test. A test that writes into the home
directory monkeypatches POCKETGPT_HOME to its own tmp_path instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("POCKETGPT_HOME", str(REPO / ".cache" / "test-home"))


@pytest.fixture(scope="session")
def corpora() -> Path:
    """The default corpora, fetched (once) into the shared test home; returns the data dir."""
    from pocketgpt.text import corpora as c

    c.fetch(progress=False)
    from pocketgpt.home import data_dir

    return data_dir()


def run_cli(*argv: str, check: bool = True):
    """Run `python -m pocketgpt ARGV` as a real subprocess; returns CompletedProcess (text)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pocketgpt", *argv], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pocketgpt {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli
