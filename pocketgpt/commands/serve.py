"""The server's verbs, named like Ollama's: `serve` runs it; `ps` and `stop` talk to a running one.

Thin: `serve` builds `pocketgpt.serve.api.create_app` over the store and hands it to uvicorn;
`ps` and `stop` are HTTP calls through `pocketgpt.serve.client` (the server is found through --host
or $POCKETGPT_HOST, like $OLLAMA_HOST; the key through --api-key or $POCKETGPT_API_KEY).
"""

from __future__ import annotations

import argparse
import os
import sys

from pocketgpt.commands import add_verb, emit
from pocketgpt.errors import PocketError


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub,
        "serve",
        help="run the HTTP server: Ollama's API (/api) and OpenAI's (/v1) over the model store",
        example="pocketgpt serve                                  # http://127.0.0.1:11434\n"
        "pocketgpt serve --host 0.0.0.0 --port 8080 --api-key $(openssl rand -hex 16)\n"
        "pocketgpt serve --cors http://localhost:5173 --keep-alive 30m --store runs/store",
        func=cmd_serve,
        json_flag=False,
    )
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default $POCKETGPT_HOST or 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=int, default=None, help="port (default 11434, Ollama's)")
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every request (default env POCKETGPT_API_KEY)",
    )
    p.add_argument(
        "--cors",
        nargs="+",
        default=None,
        metavar="ORIGIN",
        help="web origins allowed to call the server from a browser (default: none)",
    )
    p.add_argument(
        "--keep-alive",
        default="5m",
        help="how long an idle model stays loaded: 30s, 5m, 1h, 0 (unload at once), -1 (forever)",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest request body accepted (default 8 MiB; blob uploads are exempt)",
    )
    p.add_argument(
        "--stream-interval",
        type=float,
        default=None,
        metavar="MS",
        help="while a model serves several requests, each stream sends at most one chunk per MS "
        "milliseconds, with all its new text (default 10; 0 = every token; a lone stream always "
        "gets every token)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (default info: one line per request)",
    )
    _store_arg(p)

    p = add_verb(
        sub,
        "ps",
        help="the models a running server has loaded, and until when",
        example="pocketgpt ps\nPOCKETGPT_HOST=192.168.1.20:11434 pocketgpt ps --json",
        func=cmd_ps,
    )
    _client_args(p)

    p = add_verb(
        sub,
        "stop",
        help="unload a model from a running server (once its current requests end)",
        example="pocketgpt stop tiny-chat",
        func=cmd_stop,
    )
    p.add_argument("name", help="model name")
    _client_args(p)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", metavar="DIR", default=None, help="store directory (default $POCKETGPT_HOME/models)"
    )


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=None,
        metavar="URL",
        help="the server: host[:port] or http://host:port (default $POCKETGPT_HOST or 127.0.0.1:11434)",
    )
    p.add_argument("--api-key", default=None, help="the server's key (default env POCKETGPT_API_KEY)")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pocketgpt.serve.api import MAX_BODY, create_app
    from pocketgpt.serve.client import host_port
    from pocketgpt.serve.runner import parse_keep_alive
    from pocketgpt.serve.store import Store

    host, port = host_port(args.host)
    port = args.port if args.port is not None else port
    if not 0 <= port <= 65535:
        raise PocketError(f"--port {port} is not a port number (0-65535)")
    key = args.api_key or os.environ.get("POCKETGPT_API_KEY") or None
    keep_alive = parse_keep_alive(args.keep_alive)
    if args.stream_interval is not None and not 0 <= args.stream_interval <= 10_000:
        raise PocketError(f"--stream-interval {args.stream_interval:g} ms is out of range; give 0-10000")
    store = Store(args.store)
    app = create_app(
        store,
        api_key=key,
        cors_origins=args.cors,
        max_body=args.max_body or MAX_BODY,
        device=args.device,
        keep_alive=keep_alive,
        stream_interval=None if args.stream_interval is None else args.stream_interval / 1000,
    )
    names = store.names()
    print(
        f"pocketgpt serving {store.root} ({len(names)} model{'s' * (len(names) != 1)}) on http://{host}:{port}"
        f"{' with an API key' if key else ''}",
        file=sys.stderr,
        flush=True,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(
            f"warning: listening on {host} without --api-key: anyone who can reach this machine can use "
            "and delete your models",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.run(app, host=host, port=port, log_level=args.log_level)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from pocketgpt.serve.client import call, server_url

    models = call(server_url(args.host), "GET", "/api/ps", api_key=args.api_key)["models"]

    def human() -> None:
        if not models:
            print("no models loaded")
            return
        print(f"{'NAME':<32} {'SIZE':>10} {'CONTEXT':>8}  UNTIL")
        for m in models:
            print(
                f"{m['name']:<32} {_size(m['size']):>10} {m.get('context_length', 0):>8}  {_until(m['expires_at'])}"
            )

    emit(args, {"models": models}, human)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from pocketgpt.serve.client import call, server_url
    from pocketgpt.serve.store import full_name

    base, name = server_url(args.host), full_name(args.name)
    loaded = [m["name"] for m in call(base, "GET", "/api/ps", api_key=args.api_key)["models"]]
    if name not in loaded:
        raise PocketError(f"{name} is not loaded on {base} (loaded: {', '.join(loaded) or 'none'})")
    answer = call(base, "POST", "/api/generate", {"model": name, "keep_alive": 0}, api_key=args.api_key)
    unloaded = answer.get("done_reason") == "unload" and name not in [
        m["name"] for m in call(base, "GET", "/api/ps", api_key=args.api_key)["models"]
    ]
    emit(
        args,
        {"model": name, "unloaded": unloaded},
        f"stopped {name}" if unloaded else f"{name} unloads when its running requests finish",
    )
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _until(expires_at: str) -> str:
    """ISO time -> "4 minutes from now" / "forever"."""
    from datetime import UTC, datetime

    if expires_at.startswith("9999"):
        return "forever (or while in use)"
    left = (datetime.fromisoformat(expires_at.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()
    if left < 90:
        return f"{max(left, 0):.0f} seconds from now"
    return f"{left / 60:.0f} minutes from now" if left < 5400 else f"{left / 3600:.1f} hours from now"
