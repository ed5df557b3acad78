"""The HTTP server: Ollama's API (/api/*), OpenAI's (/v1/*) and the registry routes pull/push use.

    app = create_app(Store(), api_key=None)          # a FastAPI app; `pocketgpt serve` runs it with uvicorn
    uvicorn.run(app, host="127.0.0.1", port=11434)

Around every route: a request-size limit (413), a Bearer API key when one is set (401), CORS only
for the origins given, and errors in the caller's API shape: `{"error": "..."}` on /api,
`{"error": {"message", "type", "param", "code"}}` on /v1. Client mistakes (bad JSON, wrong types,
unknown models, out-of-range options, prompts longer than the context) are 4xx, never 500.
The routes live in api_ollama.py, api_openai.py and transfer.py; generation in runner.py.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketgpt.errors import PocketError
from pocketgpt.serve.http import error_body, status_of
from pocketgpt.serve.runner import Runner, settle_gc
from pocketgpt.serve.store import ModelNotFound, Store

MAX_BODY = 8 << 20  # bytes of JSON a request may send (blob uploads are exempt)
VERSION = "0.6.0"  # the Ollama API version we speak (clients check it loosely)


def create_app(
    store: Store | None = None,
    *,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    max_body: int = MAX_BODY,
    runner: Runner | None = None,
    device: str = "cpu",
    keep_alive: float | None = None,
    blob_rate: float | None = None,
    stream_interval: float | None = None,
) -> FastAPI:
    """The server over `store` (default $POCKETGPT_HOME/models). `keep_alive`: default seconds a
    model stays loaded; `blob_rate`: cap on bytes/s per blob download served (None = no cap);
    `stream_interval`: seconds between a stream's chunks while a model serves several (Runner)."""
    from pocketgpt.serve import api_ollama, api_openai, transfer

    store = store or Store()
    settings = {"default_keep_alive": keep_alive, "stream_interval": stream_interval}
    runner = runner or Runner(store, device=device, **{k: v for k, v in settings.items() if v is not None})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        settle_gc()  # a server keeps these objects for its life: no full collection should rescan them
        yield
        runner.close()

    app = FastAPI(
        title="pocketgpt",
        version=VERSION,
        lifespan=lifespan,
        description="Ollama- and OpenAI-compatible API over the pocketgpt model store.",
    )
    app.state.store, app.state.runner, app.state.blob_rate = store, runner, blob_rate
    app.include_router(api_ollama.router)
    app.include_router(api_openai.router)
    app.include_router(transfer.router)
    _errors(app)
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=max_body)
    if api_key:
        app.add_middleware(BearerAuth, key=api_key)
    if cors_origins:  # outermost (added last): preflights carry no key, and a 401 still gets CORS headers
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"]
        )

    @app.get("/", include_in_schema=False)
    def root() -> Any:
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("pocketgpt is running")

    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _reply(request, 400, _describe(exc.errors()), _param(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _reply(request, exc.status_code, str(exc.detail))

    @app.exception_handler(PocketError)
    async def client_error(request: Request, exc: PocketError) -> JSONResponse:
        code = getattr(exc, "code", None) or ("model_not_found" if isinstance(exc, ModelNotFound) else None)
        return _reply(request, status_of(exc), str(exc), getattr(exc, "param", None), code)

    @app.exception_handler(RecursionError)  # json.loads of "[[[[...": input nested past Python's stack
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return _reply(request, 400, "the request body nests too deeply; send flatter JSON")

    @app.exception_handler(Exception)  # a bug: still the caller's error shape (Starlette logs the traceback)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return _reply(request, 500, f"internal error: {type(exc).__name__}: {exc}")


def _reply(
    request: Request, status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, message, status, param, code), status_code=status)


def _describe(errors: Any) -> str:
    """Pydantic's error list -> one line naming each bad field and what it should be."""
    parts = []
    for e in errors:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        if e.get("type") == "json_invalid":
            return "the request body is not valid JSON; send a JSON object"
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts[:5])


def _param(errors: Any) -> str | None:
    """The first bad field's top-level name (OpenAI's `param`)."""
    for e in errors:
        loc = [x for x in e.get("loc", ()) if x != "body"]
        if loc:
            return str(loc[0])
    return None


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 (blob uploads exempt)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/api/blobs/"):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(scope, send)
        body, more = b"", True
        while more:  # read it all (bounded) so a chunked body is limited too
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(scope, send)
        await self.app(
            scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send
        )

    async def _refuse(self, scope: dict, send: Any) -> None:
        msg = f"request body over {self.limit} bytes; send less (or raise the server's --max-body)"
        await _send_json(send, 413, error_body(scope["path"], msg, 413))


class JsonBodies:
    """ASGI middleware: every request body is JSON, whatever its Content-Type says. `curl -d '{...}'`
    sends application/x-www-form-urlencoded, and Ollama's server reads it as JSON all the same; FastAPI
    would refuse it, so the header is set to JSON here (blob uploads keep theirs)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/api/blobs/"):
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: with an API key set, every route but / needs `Authorization: Bearer KEY`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/":
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            msg = "missing or wrong API key; send the header 'Authorization: Bearer <key>' (the server's --api-key)"
            return await _send_json(send, 401, error_body(scope["path"], msg, 401, code="invalid_api_key"))
        await self.app(scope, receive, send)


def _replay(messages: list[dict], then: Any = None) -> Any:
    queue = list(messages)

    async def receive() -> dict:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _send_json(send: Any, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
