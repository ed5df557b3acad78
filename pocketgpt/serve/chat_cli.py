"""`pocketgpt run NAME [PROMPT]`: chat with a store model in the terminal, streaming, like `ollama run`.

    >>> 你好                          a message; the reply streams as the engine writes it
    >>> \"\"\"several                  \"\"\" ... \"\"\" spans lines
    ... lines\"\"\"
    >>> /set parameter temperature 0.2     /set system You are terse.     /set verbose
    >>> /show info|parameters|template|system|license|modelfile
    >>> /clear                        forget the conversation         /bye   leave

With PROMPT it answers once and exits. Every turn goes through the one Engine with the model's
chat template (serve/loaded.py); the conversation is trimmed from the oldest turn when it no longer
fits the context. Line editing and history come from `readline` when stdin is a terminal (history
in $POCKETGPT_HOME/history). Knows nothing of HTTP; the server's runner is a separate user of loaded.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from pocketgpt.errors import PocketError
from pocketgpt.serve.loaded import LoadedModel
from pocketgpt.serve.modelfile import ModelfileError, check_value, parameter_lines

HELP = """Available commands:
  /set parameter NAME VALUE   set a sampling parameter (temperature, top_k, top_p, num_predict, stop, seed, ...)
  /set system TEXT            set the system prompt for this session
  /set verbose | quiet        show | hide token counts and speed after each answer
  /show info|parameters|template|system|license|modelfile
  /clear                      forget the conversation so far
  /bye                        leave
  /?                          this help
Use \"\"\" to begin and end a message that spans several lines."""


class ChatSession:
    """One conversation with a loaded model: history, session overrides, streaming replies."""

    def __init__(self, loaded: LoadedModel, engine: Any, out: IO[str]) -> None:
        self.loaded, self.engine, self.out = loaded, engine, out
        self.history: list[dict[str, str]] = []
        self.options: dict[str, Any] = {}
        self.system: str | None = None
        self.verbose = False

    # -- a turn ----------------------------------------------------------------------------------------
    def ask(self, prompt: str) -> str:
        """Send `prompt` as the user's turn, stream the reply to `out`, remember both."""
        turn = {"role": "user", "content": prompt}
        if len(self.loaded.prompt_ids([turn], system=self.system)) >= self.loaded.context - 1:
            raise PocketError(f"the message alone is longer than the model's context ({self.loaded.context} tokens); "
                              "send a shorter one")
        self.history.append(turn)
        ids = self._fit_prompt()
        params = self.loaded.sampling(self.options, prompt_len=len(ids))
        start = time.perf_counter()
        handle = self.engine.submit(ids, params)
        reply = []
        try:
            for delta in handle:
                reply.append(delta)
                self.out.write(delta)
                self.out.flush()
        except KeyboardInterrupt:
            handle.cancel()
        self.out.write("\n")
        text = "".join(reply)
        self.history.append({"role": "assistant", "content": text})
        if self.verbose:
            self._stats(len(ids), len(handle.tokens), time.perf_counter() - start)
        return text

    def _fit_prompt(self) -> list[int]:
        """Prompt ids for the history, dropping the oldest turns until there is room to answer
        (the newest message alone fits: `ask` checked)."""
        while True:
            ids = self.loaded.prompt_ids(self.history, system=self.system)
            if len(ids) < self.loaded.context - 1 or len(self.history) <= 1:
                return ids
            del self.history[:2]  # the oldest user turn and its answer

    def _stats(self, n_prompt: int, n_eval: int, seconds: float) -> None:
        rate = n_eval / seconds if seconds > 0 else 0.0
        self.out.write(f"prompt eval count: {n_prompt} token(s)\neval count: {n_eval} token(s)\n"
                       f"total duration: {seconds:.3f}s\neval rate: {rate:.1f} tokens/s\n")

    # -- commands --------------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run one /command; False means leave."""
        word, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if word in ("/bye", "/exit", "/quit"):
            return False
        if word in ("/?", "/help"):
            self.say(HELP)
        elif word == "/clear":
            self.history.clear()
            self.say("Cleared session context")
        elif word == "/set":
            self._set(rest)
        elif word == "/show":
            self._show(rest)
        else:
            self.say(f"Unknown command {word!r}. Type /? for help")
        return True

    def _set(self, rest: str) -> None:
        what, _, value = rest.partition(" ")
        if what == "parameter":
            key, _, raw = value.strip().partition(" ")
            try:
                v = check_value(key.lower(), raw if key.lower() == "stop" else raw.strip(), "/set parameter")
            except ModelfileError as e:
                self.say(str(e))
                return
            if key.lower() == "stop":
                self.options.setdefault("stop", []).append(v)
            else:
                self.options[key.lower()] = v
            self.say(f"Set parameter '{key.lower()}' to '{raw.strip()}'")
        elif what == "system":
            text = value.strip()
            self.system = text[3:-3].strip("\n") if text.startswith('"""') and text.endswith('"""') and len(text) >= 6 \
                else text.strip('"')
            self.say("Set system message.")
        elif what == "verbose":
            self.verbose = True
            self.say("Set 'verbose' mode.")
        elif what == "quiet":
            self.verbose = False
            self.say("Set 'quiet' mode.")
        else:
            self.say("Usage: /set parameter NAME VALUE | /set system TEXT | /set verbose | /set quiet")

    def _show(self, what: str) -> None:
        m = self.loaded.manifest
        if what == "info":
            c = self.loaded.model.config
            d = m.details()
            self.say(f"  Model\n    name                {m.name}\n    architecture        {d['family']}\n"
                     f"    parameters          {d['parameter_size']}\n    context length      {self.loaded.context}\n"
                     f"    embedding length    {c.d_model}\n    layers              {c.n_layer}\n"
                     f"    quantization        {d['quantization_level']}\n"
                     f"    template            {getattr(self.loaded.template, 'name', '?')}")
        elif what == "parameters":
            params = {**self.loaded.options, **self.options}
            self.say("\n".join(parameter_lines(params)).replace("PARAMETER ", "") or "No parameters set.")
        elif what == "template":
            t = self.loaded.template
            self.say(getattr(t, "source", None) or m.template or f"{t.name}: {t.description}")
        elif what == "system":
            self.say(self.system if self.system is not None else m.system or "No system message set.")
        elif what == "license":
            self.say("\n\n".join(m.license) or "No license.")
        elif what == "modelfile":
            self.say(m.modelfile().rstrip())
        else:
            self.say("Usage: /show info | parameters | template | system | license | modelfile")

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


# --- the loop -----------------------------------------------------------------------------------------------

def run_chat(loaded: LoadedModel, prompt: str | None = None, *, stdin: IO[str] | None = None,
             stdout: IO[str] | None = None, verbose: bool = False) -> int:
    """Answer `prompt` once, or hold a conversation over `stdin` until /bye or end of input."""
    from pocketgpt.infer.engine import Engine

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, max_len=loaded.context).start()
    session = ChatSession(loaded, engine, stdout)
    session.verbose = verbose
    try:
        if prompt is not None:
            session.ask(prompt)
            return 0
        for message in _messages(stdin, stdout):
            if message.startswith("/"):
                if not session.command(message):
                    break
            elif message.strip():
                try:
                    session.ask(message)
                except PocketError as e:
                    session.say(f"error: {e}")
        return 0
    finally:
        engine.stop()


def _messages(stdin: IO[str], stdout: IO[str]) -> Iterator[str]:
    """What the user typed: one line, or, from an opening triple quote to the closing one, several
    lines. A message in triple quotes loses them; a command keeps them (`/set system \"\"\"...`)."""
    lines = _lines(stdin, stdout)
    for line in lines:
        text = line.strip()
        while text.count('"""') % 2 == 1:  # an open block: read on to its end (or the input's)
            more = next(lines, None)
            if more is None:
                text += '"""'
                break
            text += "\n" + more
        if text.startswith('"""') and text.endswith('"""') and len(text) >= 6:
            text = text[3:-3].strip("\n")
        yield text


def _lines(stdin: IO[str], stdout: IO[str]) -> Iterator[str]:
    """Lines from a terminal (with readline editing and history) or from a pipe (no prompts)."""
    if stdin is sys.stdin and stdin.isatty():
        yield from _terminal_lines()
        return
    for line in stdin:
        yield line.rstrip("\n")


def _terminal_lines() -> Iterator[str]:
    import readline

    from pocketgpt.home import home_dir

    history = home_dir() / "history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)
    prompt, in_block = ">>> ", False
    try:
        while True:
            try:
                line = input(prompt)
            except KeyboardInterrupt:  # Ctrl-C clears the line, as in ollama; Ctrl-D leaves
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            if line.count('"""') % 2 == 1:
                in_block = not in_block
            prompt = "... " if in_block else ">>> "
            yield line
    except EOFError:
        print()
    finally:
        history.parent.mkdir(parents=True, exist_ok=True)
        try:
            readline.write_history_file(history)
        except OSError:
            pass
