"""pull/push between pocketgpt servers: every server is also a registry for its store.

Registry routes (served by every `pocketgpt serve`):

    GET  /api/manifests/{name}      the manifest document (as Store.put_manifest accepts it)
    PUT  /api/manifests/{name}      install a pushed manifest (all its blobs must be there)
    HEAD /api/blobs/{digest}        200 if present, 404 if not
    GET  /api/blobs/{digest}        the bytes; honours `Range: bytes=N-` (206) so a pull resumes
    POST /api/blobs/{digest}        upload a blob (push); verified against its sha256 before it lands

Client side: `pull(store, "http://host:port/name:tag")` downloads each missing blob into
`store.partial_blob(digest)`, resuming from the bytes already there, verifies its sha256 when
moving it in, and installs the manifest last (so an interrupted pull never leaves a half model).
A local directory or .gguf file is imported instead. `push(store, name, "http://host:port/name")`
uploads the blobs the other side lacks, then the manifest. Progress goes to `report(dict)` in
Ollama's shape {"status", "digest", "total", "completed"}.
Knows nothing of how blobs are stored or verified (serve/store.py) or of generation; the CLI verbs
are in commands/transfer.py, /api/pull and /api/push in api_ollama.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import http.client
import json
import os
import queue
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pocketgpt.errors import FetchError, PocketError
from pocketgpt.serve.http import ApiError
from pocketgpt.serve.store import BlobError, Store, check_digest, full_name

router = APIRouter(prefix="/api", tags=["registry"])
CHUNK = 1 << 16
Report = Callable[[dict[str, Any]], None]


# --- server side ------------------------------------------------------------------------------------


def _store(request: Request) -> Store:
    return request.app.state.store


@router.get("/manifests/{name:path}")
def get_manifest(name: str, request: Request) -> Any:
    """The stored manifest document of `name`."""
    return _store(request).get(name).to_json()


@router.put("/manifests/{name:path}")
async def put_manifest(name: str, request: Request) -> Any:
    """Install a pushed manifest once its blobs are present (push sends blobs first)."""
    try:
        doc = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "the manifest is not valid JSON") from None
    store = _store(request)
    missing = (
        [
            x.get("digest")
            for x in doc.get("layers", [])
            if isinstance(x, dict)
            and isinstance(x.get("digest"), str)
            and not store.has_blob(check_digest(x["digest"]))
        ]
        if isinstance(doc, dict)
        else []
    )
    if missing:
        raise ApiError(
            400, f"manifest names blobs this server lacks: {', '.join(missing[:3])}; POST them first"
        )
    store.put_manifest(name, doc)
    return {"status": "success"}


@router.head("/blobs/{digest}")
def head_blob(digest: str, request: Request) -> Response:
    """200 if the blob is here, else 404."""
    store = _store(request)
    if not store.has_blob(_digest(digest)):
        return Response(status_code=404)
    return Response(status_code=200, headers={"content-length": str(store.blob_path(digest).stat().st_size)})


@router.get("/blobs/{digest}")
async def get_blob(digest: str, request: Request) -> Any:
    """A blob's bytes, from the Range start when one is given (206), at most `blob_rate` bytes/s."""
    store = _store(request)
    path = store.blob_path(_digest(digest))
    if not path.is_file():
        raise ApiError(404, f"blob {digest} not found")
    size = path.stat().st_size
    start = _range_start(request.headers.get("range"), size)
    rate = getattr(request.app.state, "blob_rate", None)

    async def body() -> AsyncIterator[bytes]:
        with open(path, "rb") as f:
            f.seek(start)
            while block := f.read(CHUNK):
                yield block
                if rate:
                    await asyncio.sleep(len(block) / rate)

    headers = {"content-length": str(size - start), "accept-ranges": "bytes"}
    if start:
        headers["content-range"] = f"bytes {start}-{size - 1}/{size}"
    return StreamingResponse(
        body(), status_code=206 if start else 200, headers=headers, media_type="application/octet-stream"
    )


@router.post("/blobs/{digest}")
async def post_blob(digest: str, request: Request) -> Any:
    """Receive a blob (push): stream it to a temporary file beside the partial downloads, then hash
    it (in a thread: a big blob must not stall other requests) and move it in only if it matches."""
    store = _store(request)
    digest = _digest(digest)
    if store.has_blob(digest):
        return JSONResponse({}, status_code=200)
    part = store.partial_blob(digest)
    fd, tmp = tempfile.mkstemp(dir=part.parent, prefix=part.name + ".", suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as f:
            async for block in request.stream():
                f.write(block)
        await asyncio.to_thread(store.add_blob, tmp, digest)  # moves it in, or deletes it and raises
    except BlobError as e:
        raise ApiError(400, str(e)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return JSONResponse({}, status_code=201)


def _digest(digest: str) -> str:
    try:
        return check_digest(digest.replace("sha256-", "sha256:", 1))
    except PocketError as e:
        raise ApiError(400, str(e)) from None


def _range_start(header: str | None, size: int) -> int:
    """`bytes=N-` (or `bytes=N-M`, served to the end) -> N; anything else -> 0 (whole blob)."""
    if not header or not header.startswith("bytes="):
        return 0
    first = header[6:].split(",")[0].split("-")[0].strip()
    if not first.isdigit():
        return 0
    start = int(first)
    if start >= size:
        raise ApiError(416, f"range start {start} is past the blob's {size} bytes")
    return start


# --- client side ------------------------------------------------------------------------------------


def split_remote(ref: str) -> tuple[str, str]:
    """For `/api/push` with only `model`: "http://host:port/name:tag" -> ("name:tag", the same URL),
    i.e. push the local model of that name to that server under the same name."""
    _, name = _split(ref)
    return name, ref


def _split(ref: str) -> tuple[str, str]:
    """ "http://host:port/ns/name:tag" -> ("http://host:port", "ns/name:tag")."""
    if not ref.startswith(("http://", "https://")):
        raise PocketError(f"{ref!r} is not a server address; write http://HOST:PORT/NAME[:TAG]")
    scheme, _, rest = ref.partition("://")
    host, _, name = rest.partition("/")
    if not host or not name:
        raise PocketError(f"{ref!r} needs a model name after the server: http://HOST:PORT/NAME[:TAG]")
    return f"{scheme}://{host}", full_name(name)


def pull(
    store: Store,
    ref: str,
    report: Report = lambda p: None,
    *,
    name: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> str:
    """Pull `ref` (http://host:port/name:tag, or a local model directory / .gguf) into `store`;
    returns the model's local name. Resumes interrupted blob downloads; verifies every blob."""
    if not ref.startswith(("http://", "https://")):
        if Path(ref).expanduser().exists():
            report({"status": f"importing {ref}"})
            m = store.import_path(ref, name)
            report({"status": "success"})
            return m.name
        raise PocketError(
            f"cannot pull {ref!r}: give http://HOST:PORT/NAME[:TAG] (another pocketgpt server) "
            "or a local model directory or .gguf file"
        )
    base, remote = _split(ref)
    local = full_name(name or remote)
    report({"status": "pulling manifest"})
    with _get(f"{base}/api/manifests/{remote}", api_key, timeout) as resp:
        doc = _manifest_doc(resp, f"{base}/api/manifests/{remote}")
    for digest, size in _layers(doc, remote):
        if store.has_blob(digest):  # shared with a model we have: nothing to fetch
            report({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size})
            continue
        _download(store, base, digest, size, report, api_key, timeout)
    report({"status": "verifying sha256 digest"})  # each blob was verified as it moved in (add_blob)
    report({"status": "writing manifest"})
    store.put_manifest(local, doc)  # last: only now does `local` exist
    report({"status": "success"})
    return local


def _manifest_doc(resp: Any, url: str) -> dict[str, Any]:
    try:
        doc = json.loads(_read(resp, 8 << 20, url))
    except ValueError:
        raise FetchError(
            f"GET {url}: the answer is not a JSON manifest; is this a pocketgpt server?"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise FetchError(
            f"GET {url}: the answer is not a manifest (no 'layers' list); is this a pocketgpt server?"
        )
    return doc


def _layers(doc: dict[str, Any], name: str) -> list[tuple[str, int]]:
    """(digest, size) of every layer, checked before a byte is downloaded."""
    out = []
    for layer in doc["layers"]:
        size = layer.get("size") if isinstance(layer, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BlobError(f"manifest of {name}: layer {layer!r} has no valid size")
        out.append((check_digest(layer.get("digest")), size))
    return out


def _download(
    store: Store, base: str, digest: str, total: int, report: Report, api_key: str | None, timeout: float
) -> None:
    """Fetch one blob into its partial file, from where an earlier attempt stopped, then verify it
    into the store. A lock on the partial file keeps two pulls of the same blob from interleaving."""
    part = store.partial_blob(digest)
    status = f"pulling {digest[7:19]}"
    with open(part, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        if store.has_blob(digest):  # another pull finished it while we waited
            if part.exists() and part.stat().st_size == 0:
                part.unlink(missing_ok=True)
            return
        have = f.seek(0, os.SEEK_END)
        if have > total:  # not a prefix of this blob: start over
            f.truncate(0)
            have = 0
        report({"status": status, "digest": digest, "total": total, "completed": have})
        if have < total:
            have = _fetch_into(
                f,
                f"{base}/api/blobs/{digest}",
                have,
                total,
                api_key,
                timeout,
                lambda n: report({"status": status, "digest": digest, "total": total, "completed": n}),
            )
        report({"status": status, "digest": digest, "total": total, "completed": have})
        store.add_blob(part, digest)  # verifies the sha256; a corrupt download is deleted, pull again


def _fetch_into(
    f: Any,
    url: str,
    have: int,
    total: int,
    api_key: str | None,
    timeout: float,
    progress: Callable[[int], None],
) -> int:
    """Append the blob's bytes from offset `have` to `f` (Range request); returns the bytes now held."""
    resp = _get(url, api_key, timeout, {"Range": f"bytes={have}-"} if have else None)
    with resp:
        if resp.status == 200 and have:  # the server ignored the range: start over
            f.truncate(0)
            have = 0
        last = 0.0
        try:
            while block := resp.read(CHUNK):
                f.write(block)
                have += len(block)
                if time.monotonic() - last > 0.1:
                    f.flush()
                    progress(have)
                    last = time.monotonic()
        except (OSError, http.client.HTTPException) as e:
            f.flush()
            raise FetchError(
                f"GET {url}: the connection broke after {have} of {total} bytes ({type(e).__name__}); "
                "run the pull again: it resumes from there"
            ) from None
        finally:
            f.flush()
            os.fsync(f.fileno())
    if have != total:
        raise FetchError(
            f"GET {url}: the server sent {have} of {total} bytes; run the pull again: it resumes"
        )
    return have


def push(
    store: Store,
    name: str,
    ref: str,
    report: Report = lambda p: None,
    *,
    api_key: str | None = None,
    timeout: float = 30.0,
) -> str:
    """Upload `name` to the server in `ref` (http://host:port/name:tag): the blobs it lacks (each
    verified here first, and again there), then the manifest. Returns the remote name."""
    base, remote = _split(ref)
    m = store.get(name)
    for layer in m.layers:
        digest, size = layer["digest"], int(layer["size"])
        status = f"pushing {digest[7:19]}"
        if _exists(f"{base}/api/blobs/{digest}", api_key, timeout):
            report({"status": status, "digest": digest, "total": size, "completed": size})
            continue
        store.verify_blob(digest)  # never spread a corrupt blob
        report({"status": status, "digest": digest, "total": size, "completed": 0})
        with open(store.blob_path(digest), "rb") as f:
            body = _Reading(
                f,
                lambda n, d=digest, s=size, st=status: report(
                    {"status": st, "digest": d, "total": s, "completed": n}
                ),
            )
            _send(
                "POST",
                f"{base}/api/blobs/{digest}",
                body,
                api_key,
                timeout,
                {"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            )
        report({"status": status, "digest": digest, "total": size, "completed": size})
    report({"status": "pushing manifest"})
    _send(
        "PUT",
        f"{base}/api/manifests/{remote}",
        json.dumps(m.to_json()).encode(),
        api_key,
        timeout,
        {"Content-Type": "application/json"},
    )
    report({"status": "success"})
    return remote


class _Reading:
    """A file for urllib to upload that tells `progress` how many bytes have gone (at most every 0.1 s)."""

    def __init__(self, f: Any, progress: Callable[[int], None]) -> None:
        self.f, self.progress, self.sent, self.last = f, progress, 0, 0.0

    def read(self, n: int = -1) -> bytes:
        block = self.f.read(n)
        self.sent += len(block)
        if time.monotonic() - self.last > 0.1:
            self.progress(self.sent)
            self.last = time.monotonic()
        return block


def _headers(api_key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    h = dict(extra or {})
    key = api_key or os.environ.get("POCKETGPT_API_KEY")
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def _get(url: str, api_key: str | None, timeout: float, headers: dict[str, str] | None = None) -> Any:
    return _open(urllib.request.Request(url, headers=_headers(api_key, headers)), timeout)


def _read(resp: Any, limit: int, url: str) -> bytes:
    """A whole (small) answer, at most `limit` bytes."""
    try:
        data = resp.read(limit + 1)
    except (OSError, http.client.HTTPException) as e:
        raise FetchError(
            f"GET {url}: the connection broke ({type(e).__name__}); is the server running?"
        ) from None
    if len(data) > limit:
        raise FetchError(f"GET {url}: the answer is over {limit} bytes; is this a pocketgpt server?")
    return data


def _exists(url: str, api_key: str | None, timeout: float) -> bool:
    try:
        _open(urllib.request.Request(url, method="HEAD", headers=_headers(api_key)), timeout).close()
        return True
    except FetchError as e:
        if getattr(e, "status", None) == 404:
            return False
        raise


def _send(
    method: str, url: str, data: Any, api_key: str | None, timeout: float, headers: dict[str, str]
) -> None:
    _open(
        urllib.request.Request(url, data=data, method=method, headers=_headers(api_key, headers)), timeout
    ).close()


def _open(req: urllib.request.Request, timeout: float) -> Any:
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http(s) only, checked by _split)
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        if isinstance(detail, dict):
            detail = detail.get("message", "")
        err = FetchError(f"{req.get_method()} {req.full_url}: HTTP {e.code} {detail or e.reason}")
        err.status = e.code  # type: ignore[attr-defined]
        raise err from None
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(
            f"{req.get_method()} {req.full_url}: {getattr(e, 'reason', e)}; is the server running? "
            "an interrupted pull resumes where it stopped when you run it again"
        ) from None


async def progress_response(work: Callable[[Report], Any], stream: bool) -> Any:
    """Run `work(report)` in a thread; stream its progress as NDJSON (an error becomes a last
    {"error": ...} line, as Ollama does), or wait and answer {"status": "success"}."""
    if not stream:
        await asyncio.to_thread(work, lambda p: None)
        return {"status": "success"}
    q: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def run() -> None:
        try:
            work(q.put)
        except PocketError as e:
            q.put({"error": str(e)})
        except Exception as e:  # noqa: BLE001 (reported to the client, who started it)
            q.put({"error": f"{type(e).__name__}: {e}"})
        finally:
            q.put(None)

    threading.Thread(target=run, name="pocketgpt-transfer", daemon=True).start()

    async def lines() -> AsyncIterator[bytes]:
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.02)
                continue
            if item is None:
                return
            yield (json.dumps(item) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
