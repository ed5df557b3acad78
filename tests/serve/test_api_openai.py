"""OpenAI's API through the official `openai` client, unmodified, against a live server: chat and
completions (whole and SSE-streamed, usage), models, embeddings, JSON mode, tools, errors, and a
stream the client abandons. References as in test_api_ollama.py: the library without HTTP."""

from __future__ import annotations

import json
import time

import ollama
import openai
import pytest

from tests.serve.conftest import LiveServer, recording, reference
from tests.serve.tool_model import CALL, QUESTION, TOOLS

pytestmark = pytest.mark.serve
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "周一上班真的很爽。"}]


@pytest.fixture(scope="module")
def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"tiny:latest", "tiny-chat:latest"} <= ids
    assert client.models.retrieve("tiny").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_whole_and_streamed_with_usage(client: openai.OpenAI, live: LiveServer) -> None:
    whole = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=8)
    text, n_prompt, n_out = reference(
        live, "tiny", messages=CHAT, options={"temperature": 0, "num_predict": 8}
    )
    (choice,) = whole.choices
    assert choice.message.content == text and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and whole.object == "chat.completion"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (n_prompt, n_out)
    assert whole.usage.total_tokens == n_prompt + n_out
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=CHAT,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_out
    assert all(c.usage is None for c in chunks[:-1]) and len({c.id for c in chunks}) == 1
    plain = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=3, stream=True))
    assert all(c.usage is None for c in plain)  # usage only when asked for


def test_the_two_apis_agree(client: openai.OpenAI, live: LiveServer) -> None:
    theirs = ollama.Client(host=live.url).chat(
        "tiny", messages=CHAT, options={"temperature": 0, "num_predict": 8}
    )
    ours = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=8)
    assert ours.choices[0].message.content == theirs.message.content
    assert ours.usage.prompt_tokens == theirs.prompt_eval_count


def test_completions(client: openai.OpenAI, live: LiveServer) -> None:
    prompt = "It is a truth universally acknowledged"
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0.9, seed=5)
    text, n_prompt, n_out = reference(
        live, "tiny", prompt=prompt, options={"num_predict": 12, "temperature": 0.9, "seed": 5}
    )
    assert got.choices[0].text == text and got.object == "text_completion"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (n_prompt, n_out)
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=12,
            temperature=0.9,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].text for c in chunks if c.choices) == text and chunks[-1].usage.total_tokens > 0
    )
    echoed = client.completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0.9, seed=5, echo=True
    )
    assert echoed.choices[0].text == prompt + text


def test_stop_sequences_cut_the_text(client: openai.OpenAI, live: LiveServer) -> None:
    prompt = "Elizabeth smiled and said"
    full = (
        client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0).choices[0].text
    )
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = client.completions.create(model="tiny", prompt=prompt, max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_embeddings_base64_and_float_agree(client: openai.OpenAI, live: LiveServer) -> None:
    texts = ["Elizabeth", "你好，世界！"]
    packed = client.embeddings.create(model="tiny", input=texts)  # the client asks for base64 and decodes it
    floats = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.usage.prompt_tokens > 0
    native = ollama.Client(host=live.url).embed("tiny", input=texts).embeddings
    for a, b, c in zip(packed.data, floats.data, native, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6) and b.embedding == pytest.approx(
            c, abs=1e-6
        )


@pytest.mark.parametrize("seed", range(3))
def test_json_object_response_format(client: openai.OpenAI, seed: int) -> None:
    got = client.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=25, seed=seed, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(got.choices[0].message.content), dict)


def test_tool_calls_whole_and_streamed(client: openai.OpenAI, tools_model: str) -> None:
    chat = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model=tools_model, messages=chat, tools=TOOLS, temperature=0)
    (choice,) = whole.choices
    (call,) = choice.message.tool_calls
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert call.type == "function" and call.function.name == CALL["name"]
    assert json.loads(call.function.arguments) == CALL["arguments"] and call.id.startswith("call_")
    chunks = list(
        client.chat.completions.create(
            model=tools_model, messages=chat, tools=TOOLS, temperature=0, stream=True
        )
    )
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["get_weather"]
    assert json.loads("".join(d.function.arguments for d in deltas)) == CALL["arguments"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    follow = chat + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18°C, 晴"},
    ]
    after = client.chat.completions.create(model=tools_model, messages=follow, tools=TOOLS, max_tokens=4)
    assert after.choices[0].message.role == "assistant"
    none = client.chat.completions.create(
        model=tools_model, messages=chat, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40
    )
    assert none.choices[0].message.tool_calls is None  # tool_choice none: the call stays text


@pytest.mark.parametrize("call", ["chat", "completions", "embeddings"])
def test_a_missing_model_is_not_found(client: openai.OpenAI, call: str) -> None:
    requests = {
        "chat": lambda: client.chat.completions.create(model="nope", messages=CHAT),
        "completions": lambda: client.completions.create(model="nope", prompt="hi"),
        "embeddings": lambda: client.embeddings.create(model="nope", input="hi"),
    }
    with pytest.raises(openai.NotFoundError) as e:
        requests[call]()
    assert e.value.code == "model_not_found" and "nope" in e.value.message


def test_an_abandoned_stream_cancels_its_generation(client: openai.OpenAI, live: LiveServer) -> None:
    from pocketgpt.serve.loaded import load_store_model

    tok = load_store_model(live.store, "tiny-long").tokenizer
    never_stop = {str(i): -100 for i in tok.special_tokens.values()}  # no end token: it would run to 900
    ollama.Client(host=live.url).generate("tiny-long", "", keep_alive=-1)
    slot = next(s for s in live.runner.loaded() if s.name == "tiny-long:latest")
    with recording(live, "tiny-long:latest") as handles:
        stream = client.completions.create(
            model="tiny-long",
            prompt="It is",
            max_tokens=900,
            temperature=1.0,
            seed=1,
            logit_bias=never_stop,
            stream=True,
        )
        for i, _ in enumerate(stream):
            if i == 2:
                break
        stream.close()
        done = handles[0].result(timeout=30)
    assert done.finish_reason == "cancelled" and len(done.tokens) < 900
    deadline = time.monotonic() + 5
    while slot.engine.scheduler.has_work() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not slot.engine.scheduler.running and not slot.engine.scheduler.waiting
    ollama.Client(host=live.url).generate("tiny-long", "", keep_alive=0)
