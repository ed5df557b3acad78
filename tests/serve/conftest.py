"""Live servers for the API tests: uvicorn in a thread on a random 127.0.0.1 port, over a store
holding the tiny model (tests/serve/tiny_store.py). Session-scoped: one server for all API tests,
plus `guarded` (API key, small body limit, CORS) over the same store. The models:

    tiny        random weights, context 128           tiny-chat   FROM tiny, SYSTEM, temperature 0
    tiny-long   random weights, context 1024 (long generations to interrupt)
    tools       taught one tool call (tests/serve/tool_model.py), added by the `tools_model` fixture
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class LiveServer:
    url: str
    store: Any
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def runner(self) -> Any:
        """The app's Runner (serve/runner.py): its loaded models and their engines."""
        return self.server.config.app.state.runner


def start_server(store: Any, **app_kwargs: Any) -> LiveServer:
    """Run create_app(store) under uvicorn on a free port; returns once it accepts connections."""
    import uvicorn

    from pocketgpt.serve.api import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(store, **app_kwargs), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", store, server, thread)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.serve.tiny_store import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    """A server whose store has tiny, tiny-chat (SYSTEM + PARAMETER temperature 0) and tiny-long."""
    from pocketgpt.serve.modelfile import Modelfile
    from pocketgpt.serve.store import Store
    from tests.serve.tiny_store import make_tiny_model

    store = Store(tmp_path_factory.mktemp("live-store"))
    store.create_from_dir("tiny", tiny_dir)
    store.create(
        "tiny-chat",
        Modelfile.parse(
            'FROM tiny\nPARAMETER temperature 0\nPARAMETER num_predict 8\nSYSTEM "You are terse."\n'
        ),
    )
    store.create_from_dir(
        "tiny-long", make_tiny_model(tmp_path_factory.mktemp("long") / "long", block_size=1024)
    )
    srv = start_server(store)
    yield srv
    srv.stop()


GUARD_KEY = "sk-pocketgpt-test"


@pytest.fixture(scope="session")
def guarded(live: LiveServer) -> Iterator[LiveServer]:
    """A second server over the same store with --api-key, a 4 KiB body limit and one CORS origin."""
    srv = start_server(live.store, api_key=GUARD_KEY, max_body=4096, cors_origins=["http://app.example"])
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def tools_model(live: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Adds `tools` (taught to call get_weather for Paris) to the live store; returns its name."""
    from tests.serve.tool_model import make_tool_model

    live.store.create_from_dir("tools", make_tool_model(tmp_path_factory.mktemp("tools") / "tools"))
    return "tools"


def reference(
    live: LiveServer,
    name: str,
    *,
    messages: list | None = None,
    prompt: str | None = None,
    options: dict | None = None,
) -> tuple[str, int, int]:
    """(text, prompt tokens, generated tokens) from the library directly, no server involved."""
    from pocketgpt.infer.engine import Engine
    from pocketgpt.serve.loaded import load_store_model

    loaded = load_store_model(live.store, name)
    ids = loaded.prompt_ids(messages) if messages is not None else loaded.tokenizer.encode(prompt)
    engine = Engine(loaded.model, loaded.tokenizer, max_len=loaded.context)
    done = engine.generate([ids], loaded.sampling(options, len(ids)))[0]
    return done.text, len(ids), len(done.tokens)


@contextlib.contextmanager
def recording(live: LiveServer, name: str) -> Iterator[list[Any]]:
    """The RequestHandles the model's engine hands out while the block runs."""
    slot = next(s for s in live.runner.loaded() if s.name == name)
    handles: list[Any] = []
    submit = slot.engine.submit
    slot.engine.submit = lambda *a, **k: handles.append(submit(*a, **k)) or handles[-1]
    try:
        yield handles
    finally:
        del slot.engine.submit  # the instance attribute goes; the method shows through again
