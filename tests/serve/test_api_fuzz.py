"""Fuzzing: requests generated from the server's own OpenAPI schema by `schemathesis` (bodies that fit
the schema and bodies that break it), plus a list of garbage bodies sent to every route. Zero 5xx,
and every 4xx in its API's error shape.

It runs against its own server and store (the fuzzer deletes, copies, creates and pushes models).
Generated bodies name a random model, so half of them get the model renamed to `tiny` to reach the
generation code with random options. Derandomized and bounded (a few examples per route), so it is
the same check on every run and takes seconds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.serve.conftest import LiveServer, start_server

pytestmark = pytest.mark.serve
RUNS_MODELS = {
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
}
GARBAGE = [
    b"",
    b"null",
    b"[]",
    b"{",
    b"}",
    b"\xff\xfe\x00",
    b'"x"',
    b"1e999999",
    b"NaN",
    b"-Infinity",
    b'{"model": 1}',
    b'{"model": null}',
    b'{"model": ""}',
    b'{"model": "tiny", "options": {"temperature": NaN}}',
    b'{"model": "tiny", "prompt": "\\ud800\\udfff\\ud800"}',
    b'{"model": "tiny", "messages": [null]}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": {"a": 1}}]}',
    b"[" * 4000 + b"]" * 4000,
    b'{"model": "tiny", "prompt": "x", "options": {"num_predict": 1e300, "seed": -1, "top_k": -5}}',
    b'{"model": "tiny", "prompt": "x", "keep_alive": 1e308}',
    b'{"model": "tiny", "input": [[1, 2]]}',
    b'{"model": "tiny", "prompt": "x", "template": "{{ range .Messages }}{{ .Nope }}{{ end }}"}',
    b'{"model": "../../etc/passwd"}',
    b'{"model": "tiny:latest:extra", "prompt": "x"}',
    b'{"model": "tiny", "prompt": "x", "suffix": 3}',
    '{"model": "tiny", "prompt": "你好"}'.encode("utf-16"),
]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    from pocketgpt.serve.store import Store

    store = Store(tmp_path_factory.mktemp("fuzz-store"))
    store.create_from_dir("tiny", tiny_dir)
    srv = start_server(store)
    yield srv
    srv.stop()


def operations(server: LiveServer) -> list[Any]:
    schema = schemathesis.openapi.from_dict(server.server.config.app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


def check(path: str, r: httpx.Response | Any) -> None:
    assert r.status_code < 500, f"{r.status_code} from {path}: {r.text[:300]}"
    if r.status_code >= 400 and not path.startswith("/api/blobs/"):
        body = r.json()
        assert isinstance(body["error"], dict if path.startswith("/v1") else str), r.text[:300]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schema_fuzzing_finds_no_5xx(target: LiveServer, mode: str) -> None:
    from schemathesis import GenerationMode

    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    for op in operations(target):
        try:
            fuzz(target, op, generation)
        except Unsatisfiable:  # nothing to break: a route without parameters or body has no negative case
            assert mode == "negative"


def fuzz(target: LiveServer, op: Any, generation: Any) -> None:
    """Up to 8 generated requests to one operation; each must get a non-5xx answer in its API's shape."""

    @settings(
        max_examples=8,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=generation), use_tiny=st.booleans())
    def run(case: Any, use_tiny: bool) -> None:
        if use_tiny and op.path in RUNS_MODELS and isinstance(case.body, dict):
            case.body["model"] = "tiny"
        check(op.path, case.call(base_url=target.url, timeout=60))

    run()


@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_bodies_get_4xx_everywhere(target: LiveServer, body: bytes) -> None:
    routes = [
        (op.method.upper(), op.path) for op in operations(target) if op.method in ("post", "put", "delete")
    ]
    with httpx.Client(base_url=target.url, timeout=60) as client:
        for method, path in routes:
            path = path.replace("{name}", "tiny").replace("{digest}", "sha256:" + "0" * 64)
            check(
                path, client.request(method, path, content=body, headers={"content-type": "application/json"})
            )


FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SAMPLING = ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty", "frequency_penalty")
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        **{name: FLOATS for name in SAMPLING},
        **{name: st.integers(-(2**70), 2**70) for name in ("top_k", "seed", "num_predict")},
    },
)


@settings(
    max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(options=OPTIONS, json_mode=st.booleans())
def test_any_numbers_in_the_options_get_an_answer(target: LiveServer, options: dict, json_mode: bool) -> None:
    """Known option names with any finite numbers: an answer or a 4xx, never a 5xx or a hang (a setting
    that broke the engine's step would leave this and every later request of the model waiting)."""
    body = {
        "model": "tiny",
        "prompt": "x",
        "raw": True,
        "stream": False,
        "options": options,
        "format": "json" if json_mode else "",
    }
    r = httpx.post(f"{target.url}/api/generate", json=body, timeout=30)
    check("/api/generate", r)
    if r.status_code == 200 and json_mode and r.json()["done_reason"] == "stop":
        assert isinstance(json.loads(r.json()["response"]), dict)
