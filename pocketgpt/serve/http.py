"""What both HTTP APIs share: the error type with its status, the two error shapes, and timestamps.

    raise ApiError(404, "model 'x' not found, try pulling it first")
    ollama_error(exc) -> {"error": "..."}                                 (Ollama, /api/*)
    openai_error(exc) -> {"error": {"message", "type", "param", "code"}}  (OpenAI, /v1/*)

A PocketError from the library is a client error (400) unless it says otherwise; ModelNotFound is 404.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pocketgpt.errors import PocketError


class ApiError(PocketError):
    """A client error with its HTTP status (and, for OpenAI, an error type and the offending param)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def status_of(exc: Exception) -> int:
    from pocketgpt.serve.store import ModelNotFound

    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, ModelNotFound):
        return 404
    return 400 if isinstance(exc, PocketError) else 500


_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def ollama_error(message: str) -> dict[str, Any]:
    return {"error": message}


def openai_error(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPE.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_body(
    path: str, message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The error shape the API at `path` uses."""
    return openai_error(message, status, param, code) if path.startswith("/v1") else ollama_error(message)


def now_iso() -> str:
    """The current time as Ollama writes it (RFC 3339, UTC, nanosecond-ish precision)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def now_unix() -> int:
    return int(time.time())
