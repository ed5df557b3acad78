"""A store model's chat template: a named `ChatTemplate` (pocketgpt, chatml, plain) or a Go template.

Ollama's Modelfile TEMPLATE is a Go `text/template`. We render the subset chat templates use:

    {{ .System }} {{ .Prompt }} {{ .Response }}       the legacy one-turn form, applied turn by turn
    {{ range .Messages }} ... {{ end }}               the whole conversation, with {{ .Role }} {{ .Content }}
    {{ if PIPE }} ... {{ else if PIPE }} ... {{ else }} ... {{ end }}
    PIPE: .Field, $.Field (the top level inside range), eq A B, ne A B, not A, "string"
    {{- and -}} trim the whitespace on that side, as in Go

Legacy templates (no .Messages) are rendered once per user turn with that turn's .Prompt and the
reply as .Response; the last turn is cut where .Response would go, as Ollama does, so the text ends
where the model should start writing. Anything outside the subset is a TemplateError naming it.
Knows nothing of tokens beyond encoding the rendered text; text/chat.py owns the named templates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pocketgpt.errors import PocketError
from pocketgpt.text import specials
from pocketgpt.text.chat import TEMPLATES, ChatTemplate, check_messages, get_template, template_for


class TemplateError(PocketError):
    """A TEMPLATE outside the Go-template subset we render."""


ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
CUT = "\x00pocketgpt-response\x00"  # where .Response goes in the turn being generated


def chat_template(template: str | None, tokenizer) -> ChatTemplate | GoTemplate:
    """The template a model uses: its TEMPLATE (a name or Go template text), else the one its
    tokenizer was made for (text/chat.template_for)."""
    if template is None or not template.strip():
        return template_for(tokenizer)
    if template.strip() in TEMPLATES:
        return get_template(template.strip())
    check_template(template)
    return GoTemplate(template)


def check_template(template: str) -> None:
    """TemplateError unless `template` is a template name or a Go template we can render."""
    if template.strip() not in TEMPLATES:
        if "{{" not in template:
            raise TemplateError(f"TEMPLATE {template[:40]!r} is neither a template name ({', '.join(TEMPLATES)}) "
                                "nor a Go template with {{ .Prompt }} or {{ range .Messages }}")
        GoTemplate(template).render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])


@dataclass(frozen=True)
class GoTemplate:
    """An Ollama Go template; the same `render`/`encode`/`stop`/`stop_ids` surface as ChatTemplate."""

    source: str
    stop: tuple[str, ...] = ()  # a Go template names no stop strings; PARAMETER stop supplies them
    name: str = "go-template"

    def __post_init__(self) -> None:
        _parse(self.source)  # errors now, at create time, not at the first chat

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> str:
        msgs = [{"Role": r, "Content": c} for r, c in check_messages(messages)]
        nodes = _parse(self.source)
        system = "\n\n".join(m["Content"] for m in msgs if m["Role"] == "system")
        if _uses_messages(nodes):
            root = {"System": system, "Messages": msgs, "Prompt": "", "Response": ""}
            return _render(nodes, root, root)
        return self._render_turns(nodes, system, msgs, add_generation_prompt)

    def _render_turns(self, nodes: list, system: str, msgs: list[dict], add_generation_prompt: bool) -> str:
        turns: list[tuple[str, str | None]] = []  # (prompt, response or None while being generated)
        for m in msgs:
            if m["Role"] in ("user", "tool"):
                turns.append((m["Content"], None))
            elif m["Role"] == "assistant":
                prompt = turns.pop()[0] if turns and turns[-1][1] is None else ""
                turns.append((prompt, m["Content"]))
        out = []
        for i, (prompt, response) in enumerate(turns):
            root = {"System": system if i == 0 else "", "Prompt": prompt, "Messages": [],
                    "Response": CUT if response is None else response}
            text = _render(nodes, root, root)
            if response is None:
                text = text.split(CUT)[0] if add_generation_prompt else text.replace(CUT, "")
            out.append(text)
        return "".join(out)

    def encode(self, tokenizer, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> list[int]:
        return tokenizer.encode(self.render(messages, add_generation_prompt), allowed_special="all")

    def stop_ids(self, tokenizer) -> list[int]:
        eot = tokenizer.special_tokens.get(specials.EOT)
        return [eot] if eot is not None else []


# --- parsing: text and {{ actions }} -> a tree ---------------------------------------------------------

def _parse(source: str) -> list:
    """Nodes: str (text), ("expr", pipe), ("if", [(pipe, body), ...], else_body), ("range", pipe, body)."""
    tokens: list[Any] = []
    pos = 0
    for m in ACTION.finditer(source):
        text = source[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if tokens and isinstance(tokens[-1], tuple) and tokens[-1][0] == "trim_right":
            tokens.pop()
            text = text.lstrip()
        tokens.append(text)
        tokens.append(("action", m.group(2).strip()))
        if m.group(3):
            tokens.append(("trim_right",))
        pos = m.end()
    tail = source[pos:]
    if "{{" in tail:  # an action that never closes: Go refuses it ("unclosed action"), so do we
        at = pos + tail.index("{{")
        raise TemplateError(f"TEMPLATE has an unclosed action at character {at}: {source[at : at + 30]!r}; "
                            "every {{ needs its }}")
    if tokens and isinstance(tokens[-1], tuple) and tokens[-1][0] == "trim_right":
        tokens.pop()
        tail = tail.lstrip()
    tokens.append(tail)
    nodes, rest = _block(tokens, 0, top=True)
    return nodes


def _block(tokens: list, i: int, top: bool = False) -> tuple[list, int]:
    """Parse until {{ end }} / {{ else }} (returned to the caller) or the end of the template."""
    nodes: list = []
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, str):
            if tok:
                nodes.append(tok)
            i += 1
            continue
        action = tok[1]
        word = action.split(None, 1)[0] if action else ""
        if word in ("end", "else"):
            if top:
                raise TemplateError(f"TEMPLATE: {{{{ {action} }}}} without a matching {{{{ if }}}} or {{{{ range }}}}")
            return nodes, i
        if word == "if":
            node, i = _if(tokens, i)
            nodes.append(node)
        elif word == "range":
            body, j = _block(tokens, i + 1)
            if j >= len(tokens) or tokens[j][1] != "end":
                raise TemplateError("TEMPLATE: {{ range }} needs a closing {{ end }}")
            nodes.append(("range", _pipe(action[len("range"):].strip()), body))
            i = j + 1
        elif action.startswith("/*") or not action:
            i += 1  # a comment
        else:
            nodes.append(("expr", _pipe(action)))
            i += 1
    if not top:
        raise TemplateError("TEMPLATE: a block is never closed; add {{ end }}")
    return nodes, i


def _if(tokens: list, i: int) -> tuple[tuple, int]:
    branches = [(_pipe(tokens[i][1][len("if"):].strip()), None)]
    else_body: list = []
    bodies = []
    while True:
        body, j = _block(tokens, i + 1)
        if j >= len(tokens):
            raise TemplateError("TEMPLATE: {{ if }} needs a closing {{ end }}")
        bodies.append(body)
        action = tokens[j][1]
        if action == "end":
            break
        if action.startswith("else if "):
            branches.append((_pipe(action[len("else if "):].strip()), None))
            i = j
            continue
        if action == "else":
            else_body, k = _block(tokens, j + 1)
            if k >= len(tokens) or tokens[k][1] != "end":
                raise TemplateError("TEMPLATE: {{ else }} needs a closing {{ end }}")
            j = k
            break
        raise TemplateError(f"TEMPLATE: unsupported {{{{ {action} }}}}")
    return ("if", [(cond, body) for (cond, _), body in zip(branches, bodies, strict=True)], else_body), j + 1


def _pipe(text: str) -> tuple:
    """A pipeline: ("field", scope, name) | ("str", s) | ("call", fn, args)."""
    parts = re.findall(r'"(?:[^"\\]|\\.)*"|\(|\)|[^\s()]+', text)
    if not parts:
        raise TemplateError("TEMPLATE: an empty {{ }} action")
    if parts[0] in ("eq", "ne", "not", "and", "or", "len"):
        return ("call", parts[0], [_atom(p) for p in parts[1:]])
    if len(parts) != 1:
        raise TemplateError(f"TEMPLATE: unsupported expression {{{{ {text} }}}}; "
                            "use .Field, $.Field, eq/ne/not/and/or or a \"string\"")
    return _atom(parts[0])


def _atom(p: str) -> tuple:
    if p.startswith('"'):
        import json

        return ("str", json.loads(p))
    if p == ".":
        return ("dot",)
    m = re.fullmatch(r"(\$?)\.([A-Za-z_][A-Za-z0-9_]*)", p)
    if not m:
        raise TemplateError(f"TEMPLATE: unsupported term {p!r}; use .System, .Prompt, .Response, .Messages, "
                            ".Role, .Content or a \"string\"")
    return ("field", "root" if m.group(1) else "dot", m.group(2))


# --- rendering -----------------------------------------------------------------------------------------

def _uses_messages(nodes: list) -> bool:
    for n in nodes:
        if isinstance(n, tuple):
            if n[0] == "range" and n[1][0] == "field" and n[1][2] == "Messages":
                return True
            children = ([b for _, b in n[1]] + [n[2]]) if n[0] == "if" else [n[2]] if n[0] == "range" else []
            if any(_uses_messages(c) for c in children):
                return True
    return False


def _render(nodes: list, dot: Any, root: dict) -> str:
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif n[0] == "expr":
            value = _eval(n[1], dot, root)
            out.append("" if value is None else str(value))
        elif n[0] == "if":
            for cond, body in n[1]:
                if _truthy(_eval(cond, dot, root)):
                    out.append(_render(body, dot, root))
                    break
            else:
                out.append(_render(n[2], dot, root))
        elif n[0] == "range":
            items = _eval(n[1], dot, root) or []
            out += [_render(n[2], item, root) for item in items]
    return "".join(out)


def _eval(pipe: tuple, dot: Any, root: dict) -> Any:
    kind = pipe[0]
    if kind == "str":
        return pipe[1]
    if kind == "dot":
        return dot
    if kind == "field":
        scope = root if pipe[1] == "root" else dot
        if not isinstance(scope, Mapping) or pipe[2] not in scope:
            raise TemplateError(f"TEMPLATE: no field .{pipe[2]} here; inside range use .Role/.Content, "
                                "outside .System/.Prompt/.Response/.Messages")
        return scope[pipe[2]]
    fn, args = pipe[1], [_eval(a, dot, root) for a in pipe[2]]
    if fn == "eq":
        return any(args[0] == a for a in args[1:])
    if fn == "ne":
        return args[0] != args[1]
    if fn == "not":
        return not _truthy(args[0])
    if fn == "and":
        return all(_truthy(a) for a in args)
    if fn == "or":
        return any(_truthy(a) for a in args)
    return len(args[0])


def _truthy(v: Any) -> bool:
    return bool(v)
