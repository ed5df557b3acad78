"""Ollama's API through the official `ollama` client, unmodified, against a live server.

The reference for every generation is the library itself without HTTP: the same store model loaded
with `load_store_model`, the same prompt ids, a fresh `Engine`. Same text and counts prove the
server passes prompts, templates and options through faithfully (Chinese included)."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import ollama
import pytest
import torch

from tests.serve.conftest import LiveServer, recording, reference
from tests.serve.tool_model import CALL, QUESTION, TOOLS

pytestmark = pytest.mark.serve
CHINESE = "你好，世界！今天天气很好，我们去公园散步吧。"


@pytest.fixture(scope="module")
def client(live: LiveServer) -> ollama.Client:
    return ollama.Client(host=live.url)


def test_list_show_and_version(client: ollama.Client, live: LiveServer) -> None:
    names = {m.model for m in client.list().models}
    assert {"tiny:latest", "tiny-chat:latest", "tiny-long:latest"} <= names
    shown = client.show("tiny-chat")
    assert "You are terse." in shown.modelfile and "temperature" in shown.parameters
    assert shown.details.family == "gpt2" and shown.modelinfo["pocketgpt.block_size"] == 128
    assert httpx.get(f"{live.url}/api/version").json()["version"].count(".") == 2


def test_generate_streamed_and_whole_match_the_engine(client: ollama.Client, live: LiveServer) -> None:
    whole = client.generate("tiny-chat", "Elizabeth smiled")
    text, n_prompt, n_out = reference(
        live, "tiny-chat", messages=[{"role": "user", "content": "Elizabeth smiled"}]
    )
    assert whole.response == text and whole.done and whole.done_reason in ("stop", "length")
    assert (whole.prompt_eval_count, whole.eval_count) == (
        n_prompt,
        n_out,
    ) and n_out == 8  # PARAMETER num_predict 8
    assert whole.total_duration >= whole.eval_duration > 0 and whole.load_duration >= 0
    parts = list(client.generate("tiny-chat", "Elizabeth smiled", stream=True))
    assert "".join(p.response for p in parts) == text
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True] and parts[-1].eval_count == n_out


def test_raw_generate_with_options_and_chinese(client: ollama.Client, live: LiveServer) -> None:
    options = {
        "temperature": 1.0,
        "seed": 3,
        "num_predict": 40,
        "top_k": 0,
        "top_p": 1.0,
        "repeat_penalty": 1.0,
    }
    got = client.generate("tiny", CHINESE, raw=True, options=options)
    text, n_prompt, _ = reference(live, "tiny", prompt=CHINESE, options=options)
    assert got.response == text and got.prompt_eval_count == n_prompt
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)  # Chinese characters made it back whole
    again = client.generate("tiny", CHINESE, raw=True, options=options)
    assert again.response == got.response  # a seed reproduces a sample


def test_chat_streamed_and_whole_in_chinese(client: ollama.Client, live: LiveServer) -> None:
    chat = [{"role": "user", "content": CHINESE}]
    whole = client.chat("tiny-chat", messages=chat)
    text, n_prompt, n_out = reference(live, "tiny-chat", messages=chat)
    assert whole.message.role == "assistant" and whole.message.content == text
    assert whole.prompt_eval_count == n_prompt and whole.eval_count == n_out
    parts = list(client.chat("tiny-chat", messages=chat, stream=True))
    assert "".join(p.message.content for p in parts) == text and parts[-1].done
    longer = chat + [{"role": "assistant", "content": "好的。"}, {"role": "user", "content": "再说一遍"}]
    assert (
        client.chat("tiny-chat", messages=longer).prompt_eval_count
        == reference(live, "tiny-chat", messages=longer)[1]
    )


def test_embed_is_the_mean_pooled_hidden_state(client: ollama.Client, live: LiveServer) -> None:
    from pocketgpt.serve.loaded import load_store_model

    got = client.embed("tiny", input=["Elizabeth", CHINESE])
    loaded = load_store_model(live.store, "tiny")
    for text, vector in zip(["Elizabeth", CHINESE], got.embeddings, strict=True):
        with torch.no_grad():
            h = loaded.model.hidden(torch.tensor([loaded.tokenizer.encode(text)]))[0]  # (T, C)
        want = torch.nn.functional.normalize(h.mean(0), dim=0)
        assert torch.allclose(torch.tensor(vector), want, atol=1e-5)
    assert got.prompt_eval_count == len(loaded.tokenizer.encode("Elizabeth")) + len(
        loaded.tokenizer.encode(CHINESE)
    )
    legacy = client.embeddings("tiny", prompt="Elizabeth")
    assert torch.allclose(torch.tensor(legacy.embedding), torch.tensor(got.embeddings[0]), atol=1e-6)


def test_ps_and_keep_alive(client: ollama.Client, live: LiveServer) -> None:
    client.generate("tiny", "It is", options={"num_predict": 2}, keep_alive="5m")
    ps = {m.model: m for m in client.ps().models}
    assert "tiny:latest" in ps and ps["tiny:latest"].size > 0
    left = (ps["tiny:latest"].expires_at - datetime.now(UTC)).total_seconds()
    assert 240 < left <= 300
    client.generate("tiny", "It is", options={"num_predict": 2}, keep_alive=0)  # unload when done
    assert "tiny:latest" not in {m.model for m in client.ps().models}
    assert client.generate("tiny", "", keep_alive=-1).done_reason == "load"  # empty prompt: just load
    assert "tiny:latest" in {m.model for m in client.ps().models}
    assert client.generate("tiny", "", keep_alive="0s").done_reason == "unload"
    assert "tiny:latest" not in {m.model for m in client.ps().models}
    assert client.chat("tiny", messages=[], keep_alive="1h").done_reason == "load"  # chat too
    tiny = next(m for m in client.ps().models if m.model == "tiny:latest")
    assert 3500 < (tiny.expires_at - datetime.now(UTC)).total_seconds() <= 3600
    assert client.chat("tiny", messages=[], keep_alive=0).done_reason == "unload"
    assert "tiny:latest" not in {m.model for m in client.ps().models}


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy("tiny", "tiny-copy:v1")
    assert "tiny-copy:v1" in {m.model for m in client.list().models}
    client.delete("tiny-copy:v1")
    assert "tiny-copy:v1" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("tiny-copy:v1")
    assert e.value.status_code == 404


@pytest.mark.parametrize("call", ["generate", "chat", "show", "embed", "delete", "copy"])
def test_a_missing_model_is_a_404(client: ollama.Client, call: str) -> None:
    requests = {
        "generate": lambda: client.generate("nope", "hi"),
        "chat": lambda: client.chat("nope", messages=[{"role": "user", "content": "hi"}]),
        "show": lambda: client.show("nope"),
        "embed": lambda: client.embed("nope", input="hi"),
        "delete": lambda: client.delete("nope"),
        "copy": lambda: client.copy("nope", "other"),
    }
    with pytest.raises(ollama.ResponseError) as e:
        requests[call]()
    assert e.value.status_code == 404 and "nope" in e.value.error and "not found" in e.value.error


@pytest.mark.parametrize("seed", range(4))
def test_format_json_gives_one_json_object(client: ollama.Client, seed: int) -> None:
    options = {"seed": seed, "temperature": 1.0, "num_predict": 30}
    text = client.generate("tiny", "Give me JSON", format="json", options=options).response
    assert isinstance(json.loads(text), dict)
    streamed = "".join(
        p.response
        for p in client.generate("tiny", "Give me JSON", format="json", options=options, stream=True)
    )
    assert streamed == text
    chat = client.chat(
        "tiny", messages=[{"role": "user", "content": CHINESE}], format="json", options=options
    )
    assert isinstance(json.loads(chat.message.content), dict)


def test_a_tool_call_comes_back_parsed(client: ollama.Client, tools_model: str) -> None:
    chat = [{"role": "user", "content": QUESTION}]
    whole = client.chat(tools_model, messages=chat, tools=TOOLS, options={"temperature": 0})
    (call,) = whole.message.tool_calls
    assert (call.function.name, dict(call.function.arguments)) == (CALL["name"], CALL["arguments"])
    assert whole.message.content == ""
    last = list(
        client.chat(tools_model, messages=chat, tools=TOOLS, options={"temperature": 0}, stream=True)
    )[-1]
    assert last.done and last.message.tool_calls[0].function.name == "get_weather"
    # the conversation goes on with the call and the tool's answer (the model's reply is noise)
    follow = chat + [whole.message, {"role": "tool", "content": "18°C, 晴"}]
    assert client.chat(tools_model, messages=follow, tools=TOOLS, options={"num_predict": 4}).done
    plain = client.chat(
        tools_model,
        messages=[{"role": "user", "content": "hello"}],
        tools=TOOLS,
        options={"temperature": 0, "num_predict": 6},
    )
    assert not plain.message.tool_calls  # noise is not a call


def test_a_client_that_disconnects_cancels_its_generation(client: ollama.Client, live: LiveServer) -> None:
    client.generate("tiny-long", "", keep_alive=-1)  # load it, so its engine can be watched
    slot = next(s for s in live.runner.loaded() if s.name == "tiny-long:latest")
    body = {
        "model": "tiny-long",
        "prompt": "It is",
        "raw": True,
        "options": {"temperature": 0, "num_predict": 900},
    }
    with recording(live, "tiny-long:latest") as handles:
        with httpx.stream("POST", f"{live.url}/api/generate", json=body, timeout=30) as r:
            lines = r.iter_lines()
            first = [json.loads(next(lines)) for _ in range(3)]
        assert not any(x["done"] for x in first)
        done = handles[0].result(timeout=30)
    assert done.finish_reason == "cancelled" and len(done.tokens) < 900
    deadline = time.monotonic() + 5
    while slot.engine.scheduler.has_work() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not slot.engine.scheduler.running and not slot.engine.scheduler.waiting
    client.generate("tiny-long", "", keep_alive=0)


def test_a_whole_answer_request_whose_client_leaves_is_cancelled(
    client: ollama.Client, live: LiveServer
) -> None:
    client.generate("tiny-long", "", keep_alive=-1)
    options = {"temperature": 0, "num_predict": 1000}  # greedy runs all 1000 tokens (no end token comes)
    body = json.dumps(
        {"model": "tiny-long", "prompt": "It is", "raw": True, "stream": False, "options": options}
    )
    head = f"POST /api/generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    with recording(live, "tiny-long:latest") as handles:
        with socket.create_connection((urlsplit(live.url).hostname, urlsplit(live.url).port)) as sock:
            sock.sendall(f"{head}\r\n\r\n{body}".encode())
            deadline = time.monotonic() + 30
            while not handles and time.monotonic() < deadline:  # until the engine has the request
                time.sleep(0.005)
        done = handles[0].result(timeout=30)  # the client has gone without reading a byte
    assert done.finish_reason == "cancelled" and len(done.tokens) < 1000
    client.generate("tiny-long", "", keep_alive=0)


def test_curl_style_bodies_are_json_too(live: LiveServer) -> None:
    """`curl -d '{...}'` labels the body application/x-www-form-urlencoded; Ollama reads JSON anyway."""
    body = json.dumps({"model": "tiny-chat", "prompt": "你好", "stream": False}).encode()
    r = httpx.post(
        f"{live.url}/api/generate",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["eval_count"] == 8


def _stream_times(url: str, out: list[float], max_tokens: int, eos: int) -> None:
    """POST a streamed /v1/completions of exactly `max_tokens` tokens (the end-of-text token is
    forbidden by a logit bias, so greedy decoding cannot stop early); append each text chunk's
    arrival time to `out`. (The spacing lives in job.follow, which every streaming route shares.)"""
    body = {
        "model": "tiny-long", "prompt": "x", "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "logit_bias": {str(eos): -100},
    }  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                out.append(time.monotonic())


def test_streams_sharing_a_model_get_spaced_chunks_a_lone_stream_every_token(
    live: LiveServer, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from pocketgpt.infer.engine import Engine
    from pocketgpt.text.shards import load_tokenizer_of
    from tests.serve.conftest import start_server

    # The tiny model steps in well under a millisecond: a long stream could be over before a second
    # one joined it. Every engine step takes at least 2 ms here, so the streams below overlap.
    step = Engine._step

    def slow_step(self: Engine) -> None:
        time.sleep(0.002)
        step(self)

    monkeypatch.setattr(Engine, "_step", slow_step)
    eos = load_tokenizer_of(tiny_dir).special_tokens["<|endoftext|>"]
    interval = 0.1
    server = start_server(live.store, stream_interval=interval)
    try:
        lone: list[float] = []
        _stream_times(server.url, lone, 100, eos)
        assert min(b - a for a, b in pairwise(lone)) < interval / 2  # one stream: no spacing
        # A 1000-token stream runs; a 500-token one starts after its first chunk and, one token of
        # each per step, ends before it: every chunk of the short one goes out while both run.
        long: list[float] = []
        thread = threading.Thread(target=_stream_times, args=(server.url, long, 1000, eos))
        thread.start()
        deadline = time.monotonic() + 30
        while not long and time.monotonic() < deadline:
            time.sleep(0.001)
        short: list[float] = []
        _stream_times(server.url, short, 500, eos)
        thread.join()
        assert long and short and long[-1] > short[-1], "the short stream outlived the long one"
        gaps = sorted(b - a for a, b in pairwise(short))
        duration = short[-1] - short[0]
        assert len(short) >= 3, (len(short), duration)
        assert len(short) <= duration / interval + 2, (len(short), duration)  # not one per token
        assert gaps[len(gaps) // 2] >= 0.8 * interval, gaps
    finally:
        server.stop()
