"""Client mistakes get a clear 4xx in the caller's API shape, never a 500: `{"error": "..."}` on
/api, `{"error": {"message", "type", "param", "code"}}` on /v1. Plus the safety switches: the API
key (401), the body limit (413) and CORS, on the `guarded` server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.serve.conftest import GUARD_KEY, LiveServer

pytestmark = pytest.mark.serve
USER = [{"role": "user", "content": "hi"}]
LONG = "hello " * 300  # ~1800 tokens for a model whose context is 128

# (path, body: bytes sent as is or an object sent as JSON, status, a word the message must contain)
CASES: list[tuple[str, Any, int, str]] = [
    ("/api/generate", b"{", 400, "not valid JSON"),
    ("/v1/chat/completions", b'{"model": "tiny",', 400, "not valid JSON"),
    ("/api/chat", b"\xff\xfe", 400, "JSON"),
    ("/api/generate", b"[1, 2]", 400, "invalid request"),
    ("/api/generate", {"model": "tiny", "prompt": 5}, 400, "prompt"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/api/generate", {"prompt": "x"}, 400, "model"),
    ("/api/chat", {"model": "tiny", "messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 1}]}, 400, "content"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "role",
    ),
    ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "nope"),
    ("/api/chat", {"model": "nope:v2", "messages": USER}, 404, "nope:v2"),
    ("/api/show", {"model": "nope"}, 404, "not found"),
    ("/v1/chat/completions", {"model": "nope", "messages": USER}, 404, "not found"),
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "not found"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"temperature": -1}}, 400, "temperature"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"top_p": 7}}, 400, "top_p"),
    (
        "/api/generate",
        {"model": "tiny", "prompt": "x", "options": {"num_predict": "many"}},
        400,
        "num_predict",
    ),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"bogus": 1}}, 400, "bogus"),
    (
        "/api/generate",
        {"model": "tiny", "prompt": "x", "options": {"repeat_penalty": 1e-300}},
        400,
        "repeat_penalty",
    ),
    (
        "/api/generate",
        {"model": "tiny", "prompt": "x", "options": {"frequency_penalty": -1e30}},
        400,
        "frequency",
    ),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"seed": 10**23}}, 400, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "seed": -(10**23)}, 400, "seed"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": [1]}, 400, "options"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "forever"}, 400, "keep_alive"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": "yaml"}, 400, "format"),
    ("/v1/chat/completions", {"model": "tiny", "messages": USER, "temperature": 9}, 400, "temperature"),
    ("/v1/chat/completions", {"model": "tiny", "messages": USER, "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": USER, "n": 3}, 400, "n must be 1"),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": USER, "logit_bias": {"99999": 5}},
        400,
        "token ids",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": USER, "logit_bias": {"1": 500}},
        400,
        "logit_bias",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": USER, "response_format": {"type": "xml"}},
        400,
        "response_format",
    ),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": USER, "tools": [{"type": "function"}]},
        400,
        "tools[0]",
    ),
    ("/api/generate", {"model": "tiny", "prompt": LONG}, 400, "context"),
    ("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": LONG}]}, 400, "context"),
    ("/v1/completions", {"model": "tiny", "prompt": LONG}, 400, "context"),
    ("/api/embed", {"model": "tiny", "input": LONG, "truncate": False}, 400, "context"),
    ("/api/embed", {"model": "tiny", "input": [1, 2]}, 400, "input"),
    ("/v1/embeddings", {"model": "tiny", "input": []}, 400, "input"),
    ("/api/create", {"model": "x"}, 400, "from"),
    ("/api/create", {"model": "x", "from": "nope"}, 400, "nope"),
    ("/api/copy", {"source": "tiny"}, 400, "destination"),
    ("/api/pull", {"model": "tiny"}, 400, "http://"),
    ("/api/nothing", {}, 404, "Not Found"),
    ("/v1/nothing", {}, 404, "Not Found"),
]


def check_shape(path: str, r: httpx.Response, status: int) -> str:
    """The error in the API's shape; returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    if path.startswith("/v1"):
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == ("authentication_error" if status == 401 else "invalid_request_error")
        return body["error"]["message"]
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "word"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_client_mistakes_are_clear_4xx(
    live: LiveServer, path: str, body: Any, status: int, word: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{live.url}{path}", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert word in check_shape(path, r, status)


def test_openai_errors_name_the_param(live: LiveServer) -> None:
    r = httpx.post(
        f"{live.url}/v1/chat/completions", json={"model": "tiny", "messages": USER, "temperature": 9}
    )
    assert r.json()["error"]["param"] == "temperature"
    r = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "nope", "messages": USER})
    assert r.json()["error"]["code"] == "model_not_found"


def test_wrong_method_is_405(live: LiveServer) -> None:
    check_shape("/api/generate", httpx.get(f"{live.url}/api/generate"), 405)


# --- the guarded server: --api-key, --max-body 4096, --cors http://app.example -------------------------


@pytest.mark.parametrize("path", ["/api/tags", "/v1/models", "/api/generate"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {GUARD_KEY}", f"Bearer {GUARD_KEY}x"])
def test_a_missing_or_wrong_key_is_401(guarded: LiveServer, path: str, auth: str | None) -> None:
    headers = {"authorization": auth} if auth else {}
    r = httpx.request("GET" if "generate" not in path else "POST", f"{guarded.url}{path}", headers=headers)
    assert "API key" in check_shape(path, r, 401)


def test_the_right_key_opens_both_apis_for_the_official_clients(guarded: LiveServer) -> None:
    assert httpx.get(f"{guarded.url}/").status_code == 200  # liveness needs no key
    good = ollama.Client(host=guarded.url, headers={"Authorization": f"Bearer {GUARD_KEY}"})
    assert "tiny:latest" in {m.model for m in good.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=guarded.url).list()
    assert e.value.status_code == 401
    assert openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=GUARD_KEY).models.list().data
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions"])
def test_a_body_over_the_limit_is_413(guarded: LiveServer, path: str) -> None:
    key = {"authorization": f"Bearer {GUARD_KEY}"}
    body = {"model": "tiny", "prompt": "x" * 5000}
    assert "4096 bytes" in check_shape(path, httpx.post(f"{guarded.url}{path}", json=body, headers=key), 413)

    def chunks():  # no Content-Length: the limit counts what arrives
        yield from (b'{"model": "tiny", "prompt": "', b"x" * 3000, b"x" * 3000, b'"}')

    check_shape(path, httpx.post(f"{guarded.url}{path}", content=chunks(), headers=key), 413)
    small = {"model": "tiny", "prompt": "x", "max_tokens": 2, "options": {"num_predict": 2}, "stream": False}
    assert httpx.post(f"{guarded.url}{path}", json=small, headers=key, timeout=30).status_code == 200


def test_cors_only_for_the_configured_origin(guarded: LiveServer, live: LiveServer) -> None:
    def preflight(url: str, origin: str) -> httpx.Response:
        headers = {
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        }
        return httpx.options(f"{url}/api/chat", headers=headers)

    ok = preflight(guarded.url, "http://app.example")  # a preflight carries no key and still passes
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://app.example"
    assert "access-control-allow-origin" not in preflight(guarded.url, "http://evil.example").headers
    denied = httpx.get(f"{guarded.url}/api/tags", headers={"origin": "http://app.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "http://app.example"
    plain = httpx.get(f"{live.url}/api/tags", headers={"origin": "http://app.example"})  # CORS off by default
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    assert "access-control-allow-origin" not in preflight(live.url, "http://app.example").headers


def test_extreme_settings_never_stop_the_model_serving(live: LiveServer) -> None:
    """Settings whose arithmetic would overflow the sampler are refused or rounded, before the engine:
    a failed step there would hang every request of the model."""
    from tests.serve.conftest import reference

    def generate(options: dict) -> httpx.Response:
        body = {"model": "tiny", "prompt": "Elizabeth", "raw": True, "stream": False, "options": options}
        return httpx.post(f"{live.url}/api/generate", json=body, timeout=30)

    for options in ({"repeat_penalty": 1e-300}, {"presence_penalty": 1e38}, {"seed": 2**64}):
        assert generate({**options, "num_predict": 4}).status_code == 400
    tiny_t = generate({"temperature": 5e-324, "num_predict": 6})  # rounds to greedy
    greedy = reference(live, "tiny", prompt="Elizabeth", options={"temperature": 0, "num_predict": 6})[0]
    assert tiny_t.status_code == 200 and tiny_t.json()["response"] == greedy
    assert generate({"num_predict": 3}).json()["eval_count"] == 3  # still serving
