"""A small client of a running pocketgpt server, for the CLI's `ps` and `stop`.

    base = server_url()                          # $POCKETGPT_HOST like $OLLAMA_HOST, default 127.0.0.1:11434
    call(base, "GET", "/api/ps")                 # -> the JSON answer; HTTP errors -> PocketError

Where the server is: an explicit URL or host[:port], else $POCKETGPT_HOST, else http://127.0.0.1:11434
(the scheme defaults to http, the port to 11434). Knows nothing of models: it sends JSON and reads JSON.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from pocketgpt.errors import PocketError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11434


def host_port(value: str | None = None) -> tuple[str, int]:
    """ "host", "host:port", ":port" or "http://host:port" (else $POCKETGPT_HOST) -> (host, port)."""
    value = (value or os.environ.get("POCKETGPT_HOST") or "").strip()
    if not value:
        return DEFAULT_HOST, DEFAULT_PORT
    parts = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise PocketError(
            f"{value!r} is not host[:port]; e.g. 127.0.0.1:11434 or http://myhost:8080"
        ) from None
    return parts.hostname or DEFAULT_HOST, port


def server_url(value: str | None = None) -> str:
    """The base URL of the server to talk to (see the module docstring)."""
    raw = (value or os.environ.get("POCKETGPT_HOST") or "").strip()
    scheme = "https" if raw.startswith("https://") else "http"
    host, port = host_port(value)
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def call(
    base: str, method: str, path: str, body: Any = None, *, api_key: str | None = None, timeout: float = 30.0
) -> Any:
    """One JSON request; the server's `{"error": ...}` or a refused connection becomes a PocketError."""
    headers = {"Content-Type": "application/json"}
    key = api_key or os.environ.get("POCKETGPT_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raise PocketError(f"{base}: {_message(e.read())} (HTTP {e.code})") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PocketError(
            f"no pocketgpt server at {base} ({reason}); start one with `pocketgpt serve` "
            "or point POCKETGPT_HOST at it"
        ) from None


def _message(raw: bytes) -> str:
    try:
        err = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200]
    return err["message"] if isinstance(err, dict) else str(err)
