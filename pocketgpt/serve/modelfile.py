"""The Modelfile: a small recipe that says what a store model is made of (Ollama's format).

    # comments start with '#'
    FROM ./runs/chat/              a model directory, a .gguf file, or another store model (tiny:latest)
    PARAMETER temperature 0.7      sampling defaults (repeat PARAMETER stop for several stop strings)
    SYSTEM \"\"\"You are a helpful    the default system prompt; \"\"\" ... \"\"\" spans lines,
    assistant.\"\"\"                  "..." is one line with escapes, anything else runs to end of line
    TEMPLATE chatml                a chat template name (pocketgpt, chatml, plain) or an Ollama Go template
    ADAPTER ./lora/                a LoRA adapter: adapter.safetensors or a directory holding one
    MESSAGE user 你好               example turns placed before every conversation
    LICENSE \"\"\"MIT ...\"\"\"          the model's license text (repeatable)

Directives are case-insensitive. Every error names the line and says what to write instead.
Knows nothing of the store on disk: `serve/store.py` resolves FROM and packs the files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketgpt.errors import PocketError

ROLES = ("system", "user", "assistant", "tool")
DIRECTIVES = ("FROM", "PARAMETER", "SYSTEM", "TEMPLATE", "ADAPTER", "MESSAGE", "LICENSE")

# name -> (type, check, what the check means); the Ollama names, mapped onto SamplingParams by the runner
PARAMETERS: dict[str, tuple[type, Any, str]] = {
    "temperature": (float, lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_k": (int, lambda v: v >= 0, ">= 0 (0 = off)"),
    "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_p": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
    "num_predict": (int, lambda v: v >= -1, ">= -1 (-1 = until the context is full)"),
    "stop": (str, lambda v: v != "", "a non-empty string"),
    "seed": (int, lambda v: True, "an integer"),
    "repeat_penalty": (float, lambda v: v > 0, "> 0 (1 = off)"),
    "presence_penalty": (float, lambda v: True, "a number"),
    "frequency_penalty": (float, lambda v: True, "a number"),
    "num_ctx": (int, lambda v: v > 0, "> 0 tokens"),
}


class ModelfileError(PocketError):
    """A Modelfile line that cannot be understood."""


class ModelNameError(PocketError):
    """A model name that is not `name[:tag]` of letters, digits, '.', '_' and '-'."""


@dataclass
class Modelfile:
    """A parsed Modelfile. Paths (FROM, ADAPTER) are kept as written; `base_dir` resolves them."""

    from_: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # stop -> list[str], others -> a number
    system: str | None = None
    template: str | None = None
    adapter: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    base_dir: Path = field(default_factory=Path.cwd)

    @classmethod
    def parse(cls, text: str, base_dir: str | os.PathLike | None = None, source: str = "Modelfile") -> Modelfile:
        """Parse Modelfile text; relative paths in it are relative to `base_dir` (default: cwd)."""
        mf = cls(base_dir=Path(base_dir) if base_dir is not None else Path.cwd())
        for lineno, directive, arg in _instructions(text, source):
            mf._apply(directive, arg, f"{source}:{lineno}")
        if not mf.from_:
            raise ModelfileError(f"{source}: no FROM line; start with e.g. `FROM ./my-model/` or `FROM tiny:latest`")
        return mf

    @classmethod
    def load(cls, path: str | os.PathLike) -> Modelfile:
        """Read and parse a Modelfile from disk (paths inside are relative to its directory)."""
        p = Path(path)
        if not p.is_file():
            raise ModelfileError(f"{p}: no such Modelfile; write one with a `FROM ...` line, or use --from DIR")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ModelfileError(f"{p}: not UTF-8 text ({e}); save the Modelfile as UTF-8") from None
        return cls.parse(text, base_dir=p.resolve().parent, source=str(p))

    def check(self) -> Modelfile:
        """ModelfileError unless every field has the right type (for a Modelfile built from JSON,
        e.g. the server's /api/create); parsing already guarantees it for text."""
        if not isinstance(self.from_, str) or not self.from_.strip():
            raise ModelfileError("FROM is missing: give a model directory, a .gguf file or a store model name")
        for key in ("system", "template", "adapter"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ModelfileError(f"{key.upper()} must be a string, got {type(value).__name__}")
        if not isinstance(self.license, list) or not all(isinstance(x, str) for x in self.license):
            raise ModelfileError("LICENSE must be a list of strings")
        if not isinstance(self.messages, list):
            raise ModelfileError("MESSAGE list must be a list of {role, content}")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ModelfileError(f"message {i}: expected {{'role': one of {', '.join(ROLES)}, "
                                     f"'content': a string}}, got {m!r}")
        self.parameters = check_parameters(self.parameters, where="PARAMETER")
        return self

    def resolve(self, value: str) -> Path:
        """A path from the Modelfile, made absolute against `base_dir` (~ expanded)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def _apply(self, directive: str, arg: str, where: str) -> None:
        if directive == "FROM":
            if not arg:
                raise ModelfileError(f"{where}: FROM needs a model directory, a .gguf file or a store model name")
            self.from_ = arg
        elif directive == "PARAMETER":
            key, value = _parameter(arg, where)
            if key == "stop":
                self.parameters.setdefault("stop", []).append(value)
            else:
                self.parameters[key] = value
        elif directive == "SYSTEM":
            self.system = arg
        elif directive == "TEMPLATE":
            self.template = arg
        elif directive == "ADAPTER":
            if not arg:
                raise ModelfileError(f"{where}: ADAPTER needs a path to adapter.safetensors or its directory")
            self.adapter = arg
        elif directive == "MESSAGE":
            self.messages.append(_message(arg, where))
        elif directive == "LICENSE":
            self.license.append(arg)

    def render(self) -> str:
        """The Modelfile as text again (`parse(render())` gives back the same values)."""
        lines = [f"FROM {self.from_}"]
        if self.adapter:
            lines.append(f"ADAPTER {self.adapter}")
        if self.template is not None:
            lines.append(f"TEMPLATE {quote(self.template)}")
        if self.system is not None:
            lines.append(f"SYSTEM {quote(self.system)}")
        lines += parameter_lines(self.parameters)
        lines += [f"MESSAGE {m['role']} {quote(m['content'])}" for m in self.messages]
        lines += [f"LICENSE {quote(text)}" for text in self.license]
        return "\n".join(lines) + "\n"


def parameter_lines(params: dict[str, Any]) -> list[str]:
    """`PARAMETER k v` lines for a parameter dict (one line per stop string)."""
    out = []
    for key, value in params.items():
        for v in value if isinstance(value, list) else [value]:
            out.append(f"PARAMETER {key} {quote(v) if isinstance(v, str) else json.dumps(v)}")
    return out


def quote(text: str) -> str:
    """Write a value so the parser reads it back exactly: bare if simple, \"\"\" if multi-line, else "..."."""
    if text and "\n" not in text and text.strip() == text and not text.startswith('"'):
        return text
    if '"""' not in text and not text.endswith('"'):
        return f'"""{text}"""'
    return json.dumps(text, ensure_ascii=False)


def check_parameters(params: dict[str, Any], where: str = "parameters") -> dict[str, Any]:
    """Validate a parameter dict from JSON (/api/create, `/set parameter`); returns a clean copy
    with `stop` always a list."""
    if not isinstance(params, dict):
        raise ModelfileError(f"{where}: expected an object of name -> value, got {type(params).__name__}")
    out: dict[str, Any] = {}
    for key, value in params.items():
        for v in value if key == "stop" and isinstance(value, list) else [value]:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)) or key == "stop" and not isinstance(v, str):
                raise ModelfileError(f"{where}: parameter {key} must be a {'string' if key == 'stop' else 'number'}, "
                                     f"got {json.dumps(v)}")
            checked = check_value(key, v if isinstance(v, str) else json.dumps(v), where)
            if key == "stop":
                out.setdefault("stop", []).append(checked)
            else:
                out[key] = checked
    return out


# --- lines -> (line number, DIRECTIVE, argument) ----------------------------------------------------

def _instructions(text: str, source: str):
    """Yield (line number, directive, argument) with quotes removed; multi-line \"\"\" values joined."""
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        head, _, rest = line.partition(" ")
        if "\t" in head:
            head, _, more = head.partition("\t")
            rest = more + " " + rest
        directive, rest = head.upper(), rest.strip()
        if directive not in DIRECTIVES:
            raise ModelfileError(f"{source}:{lineno}: unknown instruction {head!r}; use one of {', '.join(DIRECTIVES)}")
        if directive in ("PARAMETER", "MESSAGE"):  # two-part: keep the first word, unquote the rest
            first, _, value = rest.partition(" ")
            value, i = _value(value.strip(), lines, i, f"{source}:{lineno}")
            yield lineno, directive, f"{first} {value}" if first else ""
        else:
            value, i = _value(rest, lines, i, f"{source}:{lineno}")
            yield lineno, directive, value


def _value(rest: str, lines: list[str], i: int, where: str) -> tuple[str, int]:
    """The value starting at `rest`: \"\"\"multi-line\"\"\", "one line" (JSON escapes), or bare text."""
    if rest.startswith('"""'):
        body = rest[3:]
        while '"""' not in body:
            if i >= len(lines):
                raise ModelfileError(f'{where}: """ is never closed; end the value with """')
            body += "\n" + lines[i]
            i += 1
        value, _, after = body.partition('"""')
        if after.strip():
            raise ModelfileError(f'{where}: unexpected text {after.strip()!r} after the closing """')
        return value, i
    if rest.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(rest)
        except json.JSONDecodeError:
            raise ModelfileError(f'{where}: unterminated "quoted" value; close it with " or use """...""" '
                                 "for several lines") from None
        if rest[end:].strip():
            raise ModelfileError(f"{where}: unexpected text {rest[end:].strip()!r} after the quoted value")
        return value, i
    return rest, i


def _parameter(arg: str, where: str) -> tuple[str, Any]:
    key, _, raw = arg.partition(" ")
    key = key.strip().lower()
    return key, check_value(key, raw, where)


def check_value(key: str, raw: str, where: str) -> Any:
    """One parameter's value from its text (a stop string is kept exactly), or ModelfileError."""
    if key not in PARAMETERS:
        raise ModelfileError(f"{where}: unknown parameter {key!r}; known: {', '.join(PARAMETERS)}")
    kind, ok, meaning = PARAMETERS[key]
    if raw.strip() == "" and kind is not str or raw == "":
        raise ModelfileError(f"{where}: PARAMETER {key} needs a value, e.g. `PARAMETER {key} {_example(key)}`")
    try:
        value = raw if kind is str else float(raw.strip()) if kind is float else int(raw.strip())
    except ValueError:
        raise ModelfileError(f"{where}: PARAMETER {key} {raw.strip()!r} is not {'an integer' if kind is int else 'a number'}"
                             f"; write e.g. `PARAMETER {key} {_example(key)}`") from None
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ModelfileError(f"{where}: PARAMETER {key} {raw.strip()} is not finite; give a number {meaning}")
    if not ok(value):
        raise ModelfileError(f"{where}: PARAMETER {key} {raw.strip()} is out of range; it must be {meaning}")
    return value


def _example(key: str) -> str:
    return {"stop": "<|end|>", "temperature": "0.7", "top_p": "0.9", "min_p": "0.05", "repeat_penalty": "1.1",
            "presence_penalty": "0.5", "frequency_penalty": "0.5", "num_ctx": "2048"}.get(key, "40")


def _message(arg: str, where: str) -> dict[str, str]:
    role, _, content = arg.partition(" ")
    role = role.strip().lower()
    if role not in ROLES:
        raise ModelfileError(f"{where}: MESSAGE role {role!r} is unknown; write `MESSAGE user|assistant|system text`")
    return {"role": role, "content": content}
