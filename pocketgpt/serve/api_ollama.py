"""Ollama's HTTP API (docs/api.md): the same routes, field names, NDJSON streaming and statistics.

    POST /api/generate   {"model", "prompt", "system", "template", "raw", "format", "options", "stream", "keep_alive"}
    POST /api/chat       {"model", "messages", "tools", "format", "options", "stream", "keep_alive"}
    GET  /api/tags       POST /api/show    POST /api/create    POST /api/copy    DELETE /api/delete
    POST /api/pull       POST /api/push    POST /api/embed     POST /api/embeddings (legacy)
    GET  /api/ps         GET  /api/version

Streaming answers are NDJSON, one object per delta, the last with `done: true`, `done_reason` and
the statistics (eval_count, prompt_eval_count, durations in ns). Errors are `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pocketgpt.serve.http import ApiError, now_iso
from pocketgpt.serve.job import Job, start_job
from pocketgpt.serve.runner import Runner, embed, parse_keep_alive
from pocketgpt.serve.store import Store, full_name
from pocketgpt.serve.tools import check_tools, parse_tool_calls, tools_prompt

router = APIRouter(prefix="/api", tags=["ollama"])
ROLES = ("system", "user", "assistant", "tool")
KeepAlive = str | float | int | None


class _Body(BaseModel):
    # strict: "stream": "yes" is a 400, not True (Ollama's Go decoder refuses it too); unknown fields are ignored
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _name_is_model(cls, data: Any) -> Any:  # older clients send "name"
        if isinstance(data, dict) and "model" not in data and "name" in data:
            data = {**data, "model": data["name"]}
        return data


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    function: ToolCallFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None


class GenerateRequest(_Body):
    model: str = Field(min_length=1)
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: KeepAlive = None
    images: list[str] | None = None


class ChatRequest(_Body):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Literal["json", ""] | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: KeepAlive = None


class ModelRequest(_Body):
    model: str = Field(min_length=1)
    verbose: bool = False


class CopyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class CreateRequest(_Body):
    model: str = Field(min_length=1)
    from_: str | None = Field(default=None, alias="from")
    modelfile: str | None = None
    template: str | None = None
    system: str | None = None
    license: str | list[str] | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    stream: bool = True


class PullRequest(_Body):
    model: str = Field(min_length=1)
    insecure: bool = False
    stream: bool = True


class PushRequest(_Body):
    model: str = Field(min_length=1)
    destination: str | None = None
    insecure: bool = False
    stream: bool = True


class EmbedRequest(_Body):
    model: str = Field(min_length=1)
    input: str | list[str] = ""
    truncate: bool = True
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(_Body):
    model: str = Field(min_length=1)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


def _store(request: Request) -> Store:
    return request.app.state.store


def _runner(request: Request) -> Runner:
    return request.app.state.runner


def _json_mode(fmt: Any) -> bool:
    if isinstance(fmt, dict):  # a JSON schema: we constrain to valid JSON (not to the schema itself)
        return True
    return fmt == "json"


# --- generation -----------------------------------------------------------------------------------


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> Any:
    """Complete a prompt (through the model's template unless raw); an empty prompt just loads the model."""
    runner = _runner(request)
    if not body.prompt and body.suffix is None:
        reason = await _load_only(runner, body.model, body.keep_alive)
        return {
            "model": full_name(body.model),
            "created_at": now_iso(),
            "response": "",
            "done": True,
            "done_reason": reason,
        }
    messages = None if body.raw else [{"role": "user", "content": body.prompt}]
    job = await asyncio.to_thread(
        start_job,
        runner,
        body.model,
        messages=messages,
        prompt=body.prompt,
        system=body.system,
        template=body.template,
        options=body.options,
        keep_alive=body.keep_alive,
        json_mode=_json_mode(body.format),
    )
    name = job.slot.name

    def chunk(text: str) -> dict[str, Any]:
        return {"model": name, "created_at": now_iso(), "response": text, "done": False}

    def last(text: str) -> dict[str, Any]:
        return {
            **chunk(text),
            "done": True,
            "done_reason": job.finish_reason,
            "context": [],
            **job.ollama_stats(),
        }

    return await _answer(job, request, body.stream, chunk, last)


async def _load_only(runner: Runner, model: str, keep_alive: Any) -> str:
    """Ollama's request with nothing to generate: load the model (or, with keep_alive 0, unload it
    once idle); returns the done_reason, "load" or "unload"."""
    await asyncio.to_thread(runner.load, model, keep_alive)
    return "unload" if parse_keep_alive(keep_alive, runner.default_keep_alive) == 0 else "load"


@router.post("/chat")
async def chat(body: ChatRequest, request: Request) -> Any:
    """Answer the next assistant message of a conversation (with tool calls when `tools` is given)."""
    runner = _runner(request)
    messages = [{"role": m.role, "content": _content(m)} for m in body.messages]
    if not messages:
        reason = await _load_only(runner, body.model, body.keep_alive)
        return {
            "model": full_name(body.model),
            "created_at": now_iso(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": reason,
        }
    functions = check_tools(body.tools) if body.tools else []
    if functions:
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        messages = [
            {"role": "system", "content": tools_prompt(functions, system)},
            *(m for m in messages if m["role"] != "system"),
        ]
    job = await asyncio.to_thread(
        start_job,
        runner,
        body.model,
        messages=messages,
        options=body.options,
        keep_alive=body.keep_alive,
        json_mode=_json_mode(body.format),
    )
    name = job.slot.name
    names = {f["name"] for f in functions}

    def chunk(text: str) -> dict[str, Any]:
        return {
            "model": name,
            "created_at": now_iso(),
            "message": {"role": "assistant", "content": text},
            "done": False,
        }

    def last(text: str) -> dict[str, Any]:
        out = {**chunk(text), "done": True, "done_reason": job.finish_reason, **job.ollama_stats()}
        if functions:
            calls, rest = parse_tool_calls(job.handle.result(timeout=0).text, names)
            if calls:
                out["message"] = {
                    "role": "assistant",
                    "content": rest,
                    "tool_calls": [{"function": c} for c in calls],
                }
        return out

    return await _answer(job, request, body.stream, chunk, last, buffer=bool(functions))


def _content(m: Message) -> str:
    """A message's text; an assistant's earlier tool calls are written back as the JSON it answered."""
    if m.tool_calls and not m.content:
        return "\n".join(json.dumps(c.function.model_dump(), ensure_ascii=False) for c in m.tool_calls)
    return m.content


async def _answer(
    job: Job, request: Request, stream: bool, chunk: Any, last: Any, buffer: bool = False
) -> Any:
    """NDJSON stream of chunk(delta) then last(""), or one object last(all text)."""
    if not stream:
        return last("".join([d async for d in job.deltas(request.is_disconnected)]))

    async def lines() -> AsyncIterator[bytes]:
        held = []  # with tools the answer is parsed whole, so it is sent in the last line
        try:
            async for d in job.deltas(request.is_disconnected):
                if buffer:
                    held.append(d)
                else:
                    yield _line(chunk(d))
        except ApiError as e:  # the status line is sent already: Ollama ends such a stream with an error line
            yield _line({"error": str(e)})
            return
        yield _line(last("".join(held)))

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _line(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


# --- embeddings -------------------------------------------------------------------------------------


@router.post("/embed")
async def embed_route(body: EmbedRequest, request: Request) -> Any:
    """Mean-pooled, L2-normalised final hidden states, one vector per input."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors, n, stats = await asyncio.to_thread(
        _embed, _runner(request), body.model, texts, body.truncate, body.keep_alive
    )
    return {"model": full_name(body.model), "embeddings": vectors, "prompt_eval_count": n, **stats}


@router.post("/embeddings")
async def embeddings_legacy(body: EmbeddingsRequest, request: Request) -> Any:
    """The legacy single-prompt embedding route."""
    vectors, _, _ = await asyncio.to_thread(
        _embed, _runner(request), body.model, [body.prompt], True, body.keep_alive
    )
    return {"embedding": vectors[0]}


def _embed(runner: Runner, name: str, texts: list[str], truncate: bool, keep_alive: Any) -> tuple:
    import time

    t0 = time.perf_counter()
    with runner.use(name, keep_alive) as slot:
        t1 = time.perf_counter()
        vectors, n = embed(slot, texts, truncate)
    t2 = time.perf_counter()
    return vectors, n, {"total_duration": int((t2 - t0) * 1e9), "load_duration": int((t1 - t0) * 1e9)}


# --- the store ----------------------------------------------------------------------------------------


@router.get("/tags")
def tags(request: Request) -> Any:
    """The models in the store."""
    return {"models": [m.summary() for m in _store(request).list()]}


@router.post("/show")
def show(body: ModelRequest, request: Request) -> Any:
    """A model's Modelfile, parameters, template, details and model info."""
    m = _store(request).get(body.model)
    from pocketgpt.serve.modelfile import parameter_lines

    info = {f"pocketgpt.{k}": v for k, v in m.config.items() if isinstance(v, (int, float, str, bool))}
    out = {
        "modelfile": m.modelfile(),
        "parameters": "\n".join(line.removeprefix("PARAMETER ") for line in parameter_lines(m.params)),
        "template": m.template or "",
        "details": m.details(),
        "model_info": info,
        "modified_at": m.modified_at,
        "capabilities": ["completion", "tools", "embedding"],
    }
    if m.system is not None:
        out["system"] = m.system
    if m.license:
        out["license"] = "\n".join(m.license)
    if m.messages:
        out["messages"] = m.messages
    return out


@router.post("/copy")
def copy(body: CopyRequest, request: Request) -> Any:
    """Copy a model to a new name (shares blobs)."""
    _store(request).copy(body.source, body.destination)
    return JSONResponse({}, status_code=200)


@router.delete("/delete")
def delete(body: ModelRequest, request: Request) -> Any:
    """Remove a model (unloading it first if idle)."""
    store = _store(request)
    store.get(body.model)
    _runner(request).unload(body.model)
    store.remove(body.model)
    return JSONResponse({}, status_code=200)


@router.post("/create")
def create(body: CreateRequest, request: Request) -> Any:
    """Create a model from another store model (`from`) plus template/system/parameters/messages/license,
    or from Modelfile text (`modelfile`)."""
    from pocketgpt.serve.modelfile import Modelfile, check_parameters

    store = _store(request)
    if body.modelfile:
        mf = Modelfile.parse(body.modelfile, source="/api/create modelfile")
    elif body.from_:
        mf = Modelfile(from_=body.from_)
    else:
        raise ApiError(400, "create needs `from` (a store model) or `modelfile` text")
    if mf.from_ and not store.exists(mf.from_):
        raise ApiError(
            400,
            f"FROM {mf.from_}: the server creates only from models in its store; "
            "create from a directory with `pocketgpt create NAME --from DIR` on the server's machine",
        )
    if body.template is not None:
        mf.template = body.template
    if body.system is not None:
        mf.system = body.system
    if body.parameters:
        mf.parameters = {**mf.parameters, **check_parameters(body.parameters)}
    if body.messages:
        mf.messages = [*mf.messages, *({"role": m.role, "content": m.content} for m in body.messages)]
    if body.license:
        mf.license = [*mf.license, *([body.license] if isinstance(body.license, str) else body.license)]
    store.create(body.model, mf)
    steps = [{"status": "using existing layers"}, {"status": "writing manifest"}, {"status": "success"}]
    if body.stream:
        return StreamingResponse(iter([_line(s) for s in steps]), media_type="application/x-ndjson")
    return steps[-1]


@router.post("/pull")
async def pull(body: PullRequest, request: Request) -> Any:
    """Pull http://host:port/name:tag from another pocketgpt server (resumable), or import a local path."""
    from pocketgpt.serve import transfer

    if not body.model.startswith(("http://", "https://")):
        raise ApiError(
            400,
            f"pull {body.model!r}: this server pulls from other pocketgpt servers; "
            "give http://HOST:PORT/NAME[:TAG]",
        )
    return await transfer.progress_response(
        lambda report: transfer.pull(_store(request), body.model, report), body.stream
    )


@router.post("/push")
async def push(body: PushRequest, request: Request) -> Any:
    """Push a model to another pocketgpt server: `model` is http://host:port/name:tag (or `destination`)."""
    from pocketgpt.serve import transfer

    local, remote = (body.model, body.destination) if body.destination else transfer.split_remote(body.model)
    return await transfer.progress_response(
        lambda report: transfer.push(_store(request), local, remote, report), body.stream
    )


# --- running models ----------------------------------------------------------------------------------


@router.get("/ps")
def ps(request: Request) -> Any:
    """The loaded models and when each will be unloaded."""
    models = []
    for slot in _runner(request).loaded():
        m = slot.loaded.manifest
        models.append(
            {
                "name": slot.name,
                "model": slot.name,
                "size": slot.size,
                "digest": m.digest.removeprefix("sha256:"),
                "details": m.details(),
                "expires_at": slot.expires_at(),
                "size_vram": 0,
                "context_length": slot.loaded.context,
            }
        )
    return {"models": models}


@router.get("/version")
def version() -> Any:
    from pocketgpt.serve.api import VERSION

    return {"version": VERSION}
