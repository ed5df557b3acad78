"""pull/push between real pocketgpt servers: generate with what was pulled, push, the official
`ollama` client's pull, shared blobs kept, corrupt blobs refused, interrupted pulls resumed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from pocketgpt.cli import main as cli
from pocketgpt.errors import FetchError, PocketError
from pocketgpt.serve.modelfile import Modelfile
from pocketgpt.serve.store import BlobError, Store
from pocketgpt.serve.transfer import pull, push
from tests.serve.conftest import LiveServer, start_server

pytestmark = pytest.mark.serve
REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"temperature": 0, "num_predict": 8, "seed": 1}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[LiveServer]:
    """A server whose store has tiny:latest and tiny-chat:latest (FROM tiny + SYSTEM, 中文)."""
    store = Store(tmp_path_factory.mktemp("source-store"))
    store.create_from_dir("tiny", tiny_dir)
    store.create(
        "tiny-chat", Modelfile.parse('FROM tiny\nSYSTEM "你是一个简洁的助手。"\nPARAMETER num_predict 8\n')
    )
    srv = start_server(store)
    yield srv
    srv.stop()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[LiveServer]:
    """An empty store behind a second server."""
    srv = start_server(Store(tmp_path / "sink-store"))
    yield srv
    srv.stop()


def answer(url: str, model: str, prompt: str = "你好, Elizabeth") -> str:
    return ollama.Client(host=url).generate(model=model, prompt=prompt, options=OPTIONS).response


def model_blob(store: Store, name: str) -> Path:
    layer = next(x for x in store.get(name).layers if x.get("name") == "model.safetensors")
    return store.blob_path(layer["digest"])


def test_pull_with_the_cli_then_generate(source: LiveServer, sink: LiveServer, capsys) -> None:
    rc = cli(["pull", f"{source.url}/tiny-chat", "--store", str(sink.store.root), "--json"])
    assert rc == 0
    assert '"model": "tiny-chat:latest"' in capsys.readouterr().out
    assert (
        sink.store.get("tiny-chat").digest == source.store.get("tiny-chat").digest
    )  # the same manifest bytes
    assert sink.store.get("tiny-chat").system == "你是一个简洁的助手。"
    assert answer(sink.url, "tiny-chat") == answer(source.url, "tiny-chat")
    assert not any(sink.store.partial_blob(x["digest"]).exists() for x in sink.store.get("tiny-chat").layers)


def test_push_with_the_cli(source: LiveServer, sink: LiveServer, capsys) -> None:
    rc = cli(["push", "tiny-chat", f"{sink.url}/team/chat:v1", "--store", str(source.store.root)])
    assert rc == 0
    assert "as team/chat:v1" in capsys.readouterr().out
    assert sink.store.names() == ["team/chat:v1"]
    assert sink.store.get("team/chat:v1").layers == source.store.get("tiny-chat").layers
    for layer in sink.store.get("team/chat:v1").layers:
        sink.store.verify_blob(layer["digest"])
    assert answer(sink.url, "team/chat:v1") == answer(source.url, "tiny-chat")
    # a second push finds every blob there: reports start complete, nothing is uploaded again
    seen: list[dict] = []
    push(source.store, "tiny-chat", f"{sink.url}/team/chat:v2", seen.append)
    uploads = [p for p in seen if p.get("digest") and p["completed"] < p["total"]]
    assert uploads == [] and sink.store.exists("team/chat:v2")


def test_official_ollama_client_pull(source: LiveServer, sink: LiveServer) -> None:
    client = ollama.Client(host=sink.url)
    steps = list(client.pull(f"{source.url}/tiny:latest", stream=True))
    assert steps[0].status == "pulling manifest" and steps[-1].status == "success"
    assert {s.digest for s in steps if s.digest} == {x["digest"] for x in source.store.get("tiny").layers}
    assert [m.model for m in client.list().models] == ["tiny:latest"]
    assert client.pull(f"{source.url}/tiny", stream=False).status == "success"  # again: nothing to do
    with pytest.raises(ollama.ResponseError, match="not found"):
        list(client.pull(f"{source.url}/nonexistent", stream=True))
    # and push: the sink sends its tiny:latest to a third server under the same name
    third = start_server(Store(sink.store.root.parent / "third-store"))
    try:
        assert [s.status for s in client.push(f"{third.url}/tiny:latest", stream=True)][-1] == "success"
        assert third.store.get("tiny").digest == source.store.get("tiny").digest
    finally:
        third.stop()


def test_blobs_shared_between_models_are_not_downloaded_again(source: LiveServer, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    pull(store, f"{source.url}/tiny")
    weights = model_blob(store, "tiny")
    before = weights.stat()
    seen: list[dict] = []
    pull(store, f"{source.url}/tiny-chat", seen.append)
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    shared = {x["digest"] for x in store.get("tiny").layers}
    for p in seen:
        if p.get("digest") in shared:  # one report each, already complete
            assert p["completed"] == p["total"]
    fetched = {p["digest"] for p in seen if p.get("digest") and p["digest"] not in shared}
    assert fetched == {x["digest"] for x in store.get("tiny-chat").layers} - shared
    assert fetched and len(fetched) < len(store.get("tiny-chat").layers)


def test_a_blob_changed_on_the_source_is_refused(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    bad = Store(tmp_path / "bad")
    bad.create_from_dir("tiny", tiny_dir)
    blob = model_blob(bad, "tiny")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    blob.write_bytes(bytes(data))
    srv = start_server(bad)
    try:
        store = Store(tmp_path / "store")
        digest = "sha256:" + blob.name.removeprefix("sha256-")
        with pytest.raises(BlobError, match="corrupted"):
            pull(store, f"{srv.url}/tiny")
        assert store.names() == [] and not store.has_blob(digest) and not store.partial_blob(digest).exists()
        assert cli(["pull", f"{srv.url}/tiny", "--store", str(store.root)]) == 2
        assert "corrupted, pull again" in capsys.readouterr().err
    finally:
        srv.stop()


def test_a_partial_download_resumes_from_its_bytes(source: LiveServer, tmp_path: Path) -> None:
    """The partial file's bytes are used, not fetched again: a valid prefix completes, a wrong one fails."""
    good = model_blob(source.store, "tiny").read_bytes()
    digest = "sha256:" + model_blob(source.store, "tiny").name.removeprefix("sha256-")
    store = Store(tmp_path / "store")
    store.partial_blob(digest).write_bytes(b"x" * 1000)  # not a prefix of the blob
    with pytest.raises(BlobError, match="corrupted"):
        pull(store, f"{source.url}/tiny")
    assert (
        not store.partial_blob(digest).exists() and store.names() == []
    )  # dropped, so the next pull starts over
    store.partial_blob(digest).write_bytes(good[:200_000])
    seen: list[dict] = []
    pull(store, f"{source.url}/tiny", seen.append)
    progress = [p["completed"] for p in seen if p.get("digest") == digest]
    assert progress[0] == 200_000 and min(progress) == 200_000 and progress[-1] == len(good)
    store.verify_blob(digest)


def test_errors_name_the_problem(source: LiveServer, tmp_path: Path, tiny_dir: Path) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(FetchError, match="HTTP 404 .*not found"):
        pull(store, f"{source.url}/nope")
    with pytest.raises(PocketError, match="http://HOST:PORT/NAME"):
        pull(store, "no-such-thing")
    with pytest.raises(PocketError, match="needs a model name"):
        pull(store, source.url)
    port = _free_port()
    with pytest.raises(FetchError, match="is the server running"):
        pull(store, f"http://127.0.0.1:{port}/tiny", timeout=5)
    assert store.names() == []
    assert pull(store, str(tiny_dir), name="local") == "local:latest"  # a path is imported
    locked = start_server(Store(tmp_path / "locked"), api_key="s3cret")
    try:
        with pytest.raises(FetchError, match="HTTP 401"):
            push(store, "local", f"{locked.url}/x")
        push(store, "local", f"{locked.url}/x", api_key="s3cret")
        assert locked.store.exists("x")
    finally:
        locked.stop()


def test_an_upload_that_does_not_match_its_digest_is_refused(source: LiveServer) -> None:
    import hashlib

    import httpx

    digest = "sha256:" + hashlib.sha256(b"the real bytes").hexdigest()
    r = httpx.post(f"{source.url}/api/blobs/{digest}", content=b"other bytes")
    assert r.status_code == 400 and "sha256" in r.json()["error"]
    assert not source.store.has_blob(digest)
    assert not list((source.store.blobs / "partial").glob("*.upload"))  # the upload is not kept either
    r = httpx.post(f"{source.url}/api/blobs/{digest}", content=b"the real bytes")
    assert r.status_code == 201 and source.store.read_blob(digest) == b"the real bytes"
    bad = {
        "layers": [{"mediaType": "application/vnd.pocketgpt.file", "digest": "sha256:" + "0" * 64, "size": 1}]
    }
    r = httpx.put(f"{source.url}/api/manifests/x", json=bad)
    assert r.status_code == 400 and "POST them first" in r.json()["error"]


def test_pull_of_a_gguf_file_imports_it(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    import torch

    from pocketgpt.model.checkpoint import load_model
    from pocketgpt.model.gguf_export import export_gguf
    from pocketgpt.serve.loaded import load_store_model

    gguf = export_gguf(tiny_dir, tmp_path / "Tiny-Model.F32.gguf")
    store = Store(tmp_path / "store")
    assert cli(["pull", str(gguf), "--store", str(store.root), "--json"]) == 0
    assert '"model": "tiny-model.f32:latest"' in capsys.readouterr().out  # named after the file
    pulled = load_store_model(store, "tiny-model.f32")
    model, tok = load_model(tiny_dir)
    ids = torch.tensor([tok.encode("It is a truth 你好")])
    assert pulled.tokenizer.encode("It is a truth 你好") == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(pulled.model(ids), model(ids), atol=1e-5)


# --- an interrupted pull: the source is killed mid-transfer, then restarted --------------------------

SERVE = """
import sys, uvicorn
from pocketgpt.serve.api import create_app
from pocketgpt.serve.store import Store
rate = float(sys.argv[3]) or None
uvicorn.run(create_app(Store(sys.argv[1]), blob_rate=rate), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(root: Path, port: int, rate: float) -> subprocess.Popen:
    """`create_app` under uvicorn in its own process (so it can really be killed); waits until it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(root), str(port), str(rate)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the source server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the source server did not start")


@pytest.mark.slow
def test_interrupted_pull_resumes_after_the_source_restarts(tiny_dir: Path, tmp_path: Path) -> None:
    src = Store(tmp_path / "src")
    src.create_from_dir("tiny", tiny_dir)
    weights = model_blob(src, "tiny")
    digest, total = "sha256:" + weights.name.removeprefix("sha256-"), weights.stat().st_size
    port = _free_port()
    proc = _serve(src.root, port, rate=100_000)  # ~5 s for the weights: time to kill it halfway
    store = Store(tmp_path / "store")

    def kill_midway(p: dict) -> None:
        if p.get("digest") == digest and total // 4 <= p["completed"] < total and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    try:
        with pytest.raises(FetchError, match="resumes"):
            pull(store, f"http://127.0.0.1:{port}/tiny", kill_midway, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    part = store.partial_blob(digest)
    held = part.stat().st_size
    assert 0 < held < total
    assert part.read_bytes() == weights.read_bytes()[:held]  # what arrived is kept, byte for byte
    assert store.names() == [] and not store.has_blob(digest)  # no half model, no unverified blob

    proc = _serve(src.root, port, rate=0)  # the source is back, same address
    try:
        seen: list[dict] = []
        assert pull(store, f"http://127.0.0.1:{port}/tiny", seen.append) == "tiny:latest"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    progress = [p["completed"] for p in seen if p.get("digest") == digest]
    assert progress[0] == held and min(progress) == held and progress[-1] == total  # resumed, not restarted
    store.verify_blob(digest)
    assert not part.exists()
    assert (store.materialize("tiny") / "model.safetensors").read_bytes() == weights.read_bytes()
