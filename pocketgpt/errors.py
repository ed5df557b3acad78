"""The errors pocketgpt raises on bad input.

Every error a user can cause is a `PocketError` whose message names the problem and, where
there is one, the fix. The CLI turns them into one line on stderr and exit code 2; tracebacks
only with `--debug`. Library code raises; it never prints or exits.
"""

from __future__ import annotations


class PocketError(Exception):
    """Base class: a problem with the user's input, files or environment (not a bug)."""


class DataError(PocketError):
    """A corpus or data file is missing, empty, not UTF-8, or malformed."""


class TokenizerError(PocketError):
    """A tokenizer cannot be trained, loaded or applied as asked."""


class ConfigMismatch(PocketError):
    """A checkpoint or file does not match the configuration it is loaded with."""


class FetchError(PocketError):
    """A default corpus or packaged resource could not be obtained."""
