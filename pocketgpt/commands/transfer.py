"""`pocketgpt pull` and `pocketgpt push`: move models between stores through pocketgpt servers.

Thin: parse, call `pocketgpt.serve.transfer.pull` / `push`, draw one tqdm bar per blob on stderr
from their progress reports (Ollama's {"status", "digest", "total", "completed"}), print the result.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pocketgpt.commands import add_verb, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub,
        "pull",
        help="fetch a model from another pocketgpt server (resumable, verified), or import a path",
        example="pocketgpt pull http://192.168.1.20:11434/tiny-chat:latest\n"
        "pocketgpt pull http://host:11434/tiny --name tiny-from-host\n"
        "pocketgpt pull ./runs/sft/          # a model directory or .gguf file is imported",
        func=cmd_pull,
    )
    p.add_argument(
        "ref", metavar="URL|PATH", help="http://HOST:PORT/NAME[:TAG], a model directory or a .gguf file"
    )
    p.add_argument("--name", default=None, help="local name (default: the remote name, or the path's name)")
    _common(p)

    p = add_verb(
        sub,
        "push",
        help="upload a store model to another pocketgpt server (only the blobs it lacks)",
        example="pocketgpt push tiny-chat http://192.168.1.20:11434/tiny-chat:v1",
        func=cmd_push,
    )
    p.add_argument("name", help="local model name")
    p.add_argument("ref", metavar="URL", help="http://HOST:PORT/NAME[:TAG] (the name it gets there)")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-key", default=None, help="Bearer key of the other server (default env POCKETGPT_API_KEY)"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait on the network (default 30)")
    p.add_argument(
        "--store", metavar="DIR", default=None, help="store directory (default $POCKETGPT_HOME/models)"
    )


def cmd_pull(args: argparse.Namespace) -> int:
    from pocketgpt.serve.store import Store
    from pocketgpt.serve.transfer import pull

    with Bars(quiet=args.json) as bars:
        name = pull(
            Store(args.store), args.ref, bars, name=args.name, api_key=args.api_key, timeout=args.timeout
        )
    emit(args, {"status": "success", "model": name}, f"pulled {name}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from pocketgpt.serve.store import Store
    from pocketgpt.serve.transfer import push

    with Bars(quiet=args.json) as bars:
        remote = push(
            Store(args.store), args.name, args.ref, bars, api_key=args.api_key, timeout=args.timeout
        )
    emit(
        args,
        {"status": "success", "model": args.name, "destination": args.ref},
        f"pushed {args.name} to {args.ref} as {remote}",
    )
    return 0


class Bars:
    """A progress report callback: one byte bar per blob, drawn one after another (a bar closes when
    its blob is complete or the next begins); other statuses as plain lines."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet, self.bar, self.digest, self.said = quiet, None, None, set()

    def __call__(self, p: dict[str, Any]) -> None:
        if self.quiet:
            return
        digest = p.get("digest")
        if digest is None:
            self.close()
            if p["status"] not in self.said and p["status"] != "success":
                self.said.add(p["status"])
                print(p["status"], file=sys.stderr, flush=True)
            return
        if digest != self.digest:
            from tqdm import tqdm

            self.close()
            start = int(p.get("completed") or 0)  # a resumed download starts where the last one stopped
            self.digest = digest
            self.bar = tqdm(
                total=p.get("total") or None,
                initial=start,
                desc=p["status"],
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if self.bar is None:  # this blob's bar is already complete
            return
        self.bar.update(max(int(p.get("completed") or 0) - self.bar.n, 0))
        if p.get("total") and self.bar.n >= p["total"]:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
