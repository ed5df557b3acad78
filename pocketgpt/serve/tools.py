"""Tool calling for chat: the tool schemas go into the system prompt; a JSON answer comes back as calls.

    system = tools_prompt(tools, system)          # lists each function's name, description, parameters
    calls, text = parse_tool_calls(answer)        # [{"name": ..., "arguments": {...}}], text left over

The model is asked to answer with `{"name": ..., "arguments": {...}}` (optionally wrapped in
<tool_call>...</tool_call>, as Qwen/Hermes-style models do; several such blocks = several calls).
An answer that is not such an object is plain text. `tools` is the OpenAI / Ollama list shape:
[{"type": "function", "function": {"name", "description", "parameters"}}]. Knows nothing of HTTP.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pocketgpt.errors import PocketError

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """Validate the request's `tools` list; returns the function objects."""
    if not isinstance(tools, list):
        raise PocketError('tools must be a list of {"type": "function", "function": {...}}')
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise PocketError(
                f"tools[{i}] needs a function with a name: "
                '{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}'
            )
        out.append(fn)
    return out


def tools_prompt(tools: list[dict[str, Any]], system: str | None = None) -> str:
    """A system prompt that lists the functions and the answer format for calling one. Keys are
    sorted, so the same tools make the same prompt whichever client (and key order) sent them."""
    lines = [system.rstrip(), ""] if system else []
    lines.append("You can call these functions:")
    for fn in tools:
        lines.append(
            json.dumps(
                {
                    "name": fn["name"],
                    "description": fn.get("description", ""),
                    "parameters": fn.get("parameters", {}),
                },
                ensure_ascii=False,
                sort_keys=True,
            )
        )
    lines.append('To call a function, answer only with JSON: {"name": "<function name>", "arguments": {...}}')
    return "\n".join(lines)


def parse_tool_calls(text: str, names: set[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Tool calls found in a model's answer -> ([{"name", "arguments"}], remaining text).
    With `names`, only calls of those functions count."""
    blocks = _TAGGED.findall(text)
    candidates = blocks if blocks else [text.strip()]
    calls = []
    for block in candidates:
        call = _as_call(block)
        if call is None or (names is not None and call["name"] not in names):
            return [], text
        calls.append(call)
    return calls, ""


def _as_call(block: str) -> dict[str, Any] | None:
    block = block.strip()
    if block.startswith("```"):
        block = block.strip("`").removeprefix("json").strip()
    try:
        obj = json.loads(block)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": obj["name"], "arguments": args}
