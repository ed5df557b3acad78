"""`pocketgpt serve` in a real subprocess on a random port, then `pocketgpt ps` and `stop` against it
(through $POCKETGPT_HOST and --host, with its API key), then a clean shutdown on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pocketgpt.cli import main as cli

pytestmark = pytest.mark.serve
REPO = Path(__file__).resolve().parents[2]
KEY = "sk-cli-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_then_ps_and_stop(tiny_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from pocketgpt.serve.store import Store

    Store(tmp_path / "store").create_from_dir("tiny", tiny_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "POCKETGPT_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "pocketgpt",
        "serve",
        "--port",
        str(port),
        "--store",
        str(tmp_path / "store"),
        "--keep-alive",
        "1h",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "pocketgpt serve did not come up"
            time.sleep(0.2)
        key = {"authorization": f"Bearer {KEY}"}
        assert httpx.get(f"{url}/api/tags", timeout=10).status_code == 401  # the env key is enforced

        monkeypatch.setenv("POCKETGPT_HOST", f"127.0.0.1:{port}")
        assert cli(["ps"]) == 2 and "API key" in capsys.readouterr().err  # no key on the client side
        monkeypatch.setenv("POCKETGPT_API_KEY", KEY)
        assert cli(["ps"]) == 0 and "no models loaded" in capsys.readouterr().out
        httpx.post(f"{url}/api/generate", json={"model": "tiny"}, headers=key, timeout=60).raise_for_status()
        assert cli(["ps"]) == 0
        out = capsys.readouterr().out
        assert "tiny:latest" in out and "minutes from now" in out  # --keep-alive 1h
        assert cli(["ps", "--json", "--host", url]) == 0
        (loaded,) = json.loads(capsys.readouterr().out)["models"]
        assert loaded["name"] == "tiny:latest" and loaded["context_length"] == 128

        assert cli(["stop", "tiny", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"model": "tiny:latest", "unloaded": True}
        assert httpx.get(f"{url}/api/ps", headers=key, timeout=10).json() == {"models": []}
        assert cli(["stop", "tiny"]) == 2 and "not loaded" in capsys.readouterr().err
        monkeypatch.setenv("POCKETGPT_HOST", f"127.0.0.1:{free_port()}")
        assert cli(["ps"]) == 2 and "no pocketgpt server" in capsys.readouterr().err
    finally:
        server.send_signal(signal.SIGINT)
        try:
            rc = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    err = server.stderr.read()
    assert rc == 0, err
    assert f"on http://127.0.0.1:{port} with an API key" in err and "1 model)" in err


def test_serve_refuses_bad_arguments(capsys) -> None:
    assert cli(["serve", "--port", "70000"]) == 2 and "--port" in capsys.readouterr().err
    assert cli(["serve", "--keep-alive", "soon"]) == 2 and "keep_alive" in capsys.readouterr().err
