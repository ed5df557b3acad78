"""OpenAI's HTTP API, as the official `openai` client parses it: chat, completions, models, embeddings.

    POST /v1/chat/completions   {"model", "messages", "max_tokens" | "max_completion_tokens", "temperature", "top_p",
                                 "stop", "seed", "n" (1 only), "logit_bias", "presence_penalty", "frequency_penalty",
                                 "response_format": {"type": "json_object"}, "tools", "stream", "stream_options"}
    POST /v1/completions        {"model", "prompt", ...the same sampling fields}
    GET  /v1/models, /v1/models/{id}          POST /v1/embeddings {"model", "input"}

Streaming is server-sent events (`data: {chunk}` ... `data: [DONE]`); with
`stream_options.include_usage` a last chunk with empty `choices` carries `usage`.
Errors are `{"error": {"message", "type", "param", "code"}}` with the HTTP status the client maps
to its exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from pocketgpt.serve.http import ApiError, now_unix, openai_error
from pocketgpt.serve.job import Job, start_job
from pocketgpt.serve.runner import Runner, embed
from pocketgpt.serve.store import Store, full_name
from pocketgpt.serve.tools import check_tools, parse_tool_calls, tools_prompt

router = APIRouter(prefix="/v1", tags=["openai"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text", "json_object", "json_schema"] = "text"


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] = ""
    echo: bool = False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str = Field(min_length=1)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"  # the official client asks for base64


def _runner(request: Request) -> Runner:
    return request.app.state.runner


def _store(request: Request) -> Store:
    return request.app.state.store


def _options(body: _Sampling, max_tokens: int | None) -> tuple[dict[str, Any], dict[int, float]]:
    """OpenAI fields -> Ollama option names (serve/loaded.py maps those onto SamplingParams)."""
    if body.n != 1:
        raise ApiError(
            400, "n must be 1: pocketgpt answers one choice per request; send n requests instead", param="n"
        )
    o: dict[str, Any] = {}
    if max_tokens is not None:
        o["num_predict"] = max_tokens
    for ours, theirs in (
        ("temperature", body.temperature),
        ("top_p", body.top_p),
        ("seed", body.seed),
        ("presence_penalty", body.presence_penalty),
        ("frequency_penalty", body.frequency_penalty),
    ):
        if theirs is not None:
            o[ours] = theirs
    if body.stop:
        o["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    bias = {}
    for k, v in (body.logit_bias or {}).items():
        if not k.lstrip("-").isdigit() or not -100 <= v <= 100:
            raise ApiError(
                400,
                f"logit_bias: keys are token ids and values in [-100, 100]; got {k!r}: {v}",
                param="logit_bias",
            )
        bias[int(k)] = float(v)
    return o, bias


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """A chat completion (SSE chunks when stream), with tool calls when `tools` is given."""
    options, bias = _options(
        body, body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    messages = []
    for m in body.messages:
        role = "system" if m.role == "developer" else m.role
        content = _text(m.content)
        if m.tool_calls and not content:
            content = "\n".join(
                json.dumps(
                    {
                        "name": c.get("function", {}).get("name"),
                        "arguments": c.get("function", {}).get("arguments"),
                    },
                    ensure_ascii=False,
                )
                for c in m.tool_calls
            )
        messages.append({"role": role, "content": content})
    functions = check_tools(body.tools) if body.tools and body.tool_choice != "none" else []
    if functions:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        messages = [
            {"role": "system", "content": tools_prompt(functions, system)},
            *(m for m in messages if m["role"] != "system"),
        ]
    json_mode = bool(body.response_format and body.response_format.type != "text")
    job = await asyncio.to_thread(
        start_job,
        _runner(request),
        body.model,
        messages=messages,
        options=options,
        json_mode=json_mode,
        logit_bias=bias,
    )
    reply = _Reply("chatcmpl", job.slot.name)
    names = {f["name"] for f in functions}

    def message(text: str) -> tuple[dict[str, Any], str]:
        calls, rest = parse_tool_calls(text, names) if functions else ([], text)
        if not calls:
            return {
                "role": "assistant",
                "content": text,
            }, job.finish_reason if job.finish_reason != "cancelled" else "stop"
        return {
            "role": "assistant",
            "content": rest or None,
            "tool_calls": [
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {
                        "name": c["name"],
                        "arguments": json.dumps(c["arguments"], ensure_ascii=False),
                    },
                }
                for c in calls
            ],
        }, "tool_calls"

    if not body.stream:
        text = "".join([d async for d in job.deltas(request.is_disconnected)])
        msg, reason = message(text)
        choice = {"index": 0, "message": msg, "finish_reason": reason, "logprobs": None}
        return reply("chat.completion", choices=[choice], usage=_usage(job))

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return reply("chat.completion.chunk", choices=[choice])

    async def events() -> AsyncIterator[bytes]:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        held = []
        try:
            async for d in job.deltas(request.is_disconnected):
                if functions:
                    held.append(d)
                else:
                    yield _sse(chunk({"content": d}))
        except ApiError as e:  # the status line is sent already: the error goes in the stream
            yield _sse(openai_error(str(e), e.status))
            return
        msg, reason = message("".join(held))
        if functions and "tool_calls" in msg:
            calls = [{"index": i, **c} for i, c in enumerate(msg["tool_calls"])]
            yield _sse(chunk({"tool_calls": calls}))
        elif held:
            yield _sse(chunk({"content": "".join(held)}))
        yield _sse(chunk({}, reason))
        for end in _stream_end(body, job, reply, "chat.completion.chunk"):
            yield end

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    """A plain text completion of `prompt` (no chat template)."""
    options, bias = _options(body, body.max_tokens if body.max_tokens is not None else 16)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(
            400,
            "prompt must be one string (or a list of one); send several requests for several prompts",
            param="prompt",
        )
    prompt = prompts[0]
    job = await asyncio.to_thread(
        start_job, _runner(request), body.model, prompt=prompt, options=options, logit_bias=bias
    )
    reply = _Reply("cmpl", job.slot.name)
    head = prompt if body.echo else ""

    def reason() -> str:
        return "stop" if job.finish_reason == "cancelled" else job.finish_reason

    if not body.stream:
        text = "".join([d async for d in job.deltas(request.is_disconnected)])
        choice = {"index": 0, "text": head + text, "finish_reason": reason(), "logprobs": None}
        return reply("text_completion", choices=[choice], usage=_usage(job))

    def chunk(text: str, why: str | None = None) -> dict[str, Any]:
        return reply("text_completion", choices=[{"index": 0, "text": text, "finish_reason": why, "logprobs": None}])

    async def events() -> AsyncIterator[bytes]:
        if head:
            yield _sse(chunk(head))
        try:
            async for d in job.deltas(request.is_disconnected):
                yield _sse(chunk(d))
        except ApiError as e:
            yield _sse(openai_error(str(e), e.status))
            return
        yield _sse(chunk("", reason()))
        for end in _stream_end(body, job, reply, "text_completion"):
            yield end

    return StreamingResponse(events(), media_type="text/event-stream")


class _Reply:
    """The fields every object of one response carries: `reply(object, **fields)` -> the dict with
    the response's id (`prefix-...`), creation time and model name first."""

    def __init__(self, prefix: str, model: str) -> None:
        self.id, self.created, self.model = f"{prefix}-{uuid.uuid4().hex[:24]}", now_unix(), model

    def __call__(self, obj: str, **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, **fields}


def _stream_end(body: Any, job: Job, reply: _Reply, obj: str) -> Iterator[bytes]:
    """How an SSE stream ends: a usage chunk with no choices if `stream_options.include_usage`
    asked for one, then `[DONE]`."""
    if body.stream_options and body.stream_options.include_usage:
        yield _sse(reply(obj, choices=[], usage=_usage(job)))
    yield b"data: [DONE]\n\n"


def _usage(job: Job) -> dict[str, int]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.eval_count,
        "total_tokens": job.prompt_tokens + job.eval_count,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


@router.get("/models")
def models(request: Request) -> Any:
    """The store's models as OpenAI model objects."""
    return {"object": "list", "data": [_model(m) for m in _store(request).list()]}


@router.get("/models/{model_id:path}")
def model(model_id: str, request: Request) -> Any:
    return _model(_store(request).get(model_id))


def _model(m: Any) -> dict[str, Any]:
    from datetime import datetime

    created = int(datetime.fromisoformat(m.modified_at.replace("Z", "+00:00")).timestamp())
    return {"id": m.name, "object": "model", "created": created, "owned_by": "pocketgpt"}


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Any:
    """Mean-pooled, L2-normalised final hidden states, one per input."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise ApiError(400, "input must be a string or a non-empty list of strings", param="input")
    runner = _runner(request)

    def run() -> tuple[list[list[float]], int]:
        with runner.use(body.model) as slot:
            return embed(slot, texts, truncate=False)

    vectors, n = await asyncio.to_thread(run)
    return {
        "object": "list",
        "model": full_name(body.model),
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as JSON floats, or as base64 of little-endian float32 (what the client decodes with numpy)."""
    if encoding == "float":
        return vector
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
