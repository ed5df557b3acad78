"""The chat template: a conversation (a list of role/content messages) <-> one string <-> token ids.

One place decides how roles are written, so SFT data, the server, the chat page and eval-tasks
all see the same bytes. Three templates:

    pocketgpt  <|system|>{sys}<|end|>\\n<|user|>{u}<|end|>\\n<|assistant|>{a}<|end|>\\n
    chatml     <|im_start|>system\\n{sys}<|im_end|>\\n<|im_start|>user\\n{u}<|im_end|>\\n<|im_start|>assistant\\n{a}<|im_end|>\\n
    plain      System: {sys}\\nUser: {u}\\nAssistant: {a}\\n            (for tokenizers with no chat tokens)

A turn is   header(role) + content + close + sep.   The generation prompt is the assistant header
alone; the model writes the content and then the close (`<|end|>`), which is where generation stops.
`encode` encodes markers and contents separately: markers may be special tokens, contents never are
(a user typing "<|end|>" gets the characters, not the token), and the boundary between a header
and its content is the same in training and at inference. For pocketgpt and chatml that equals
`tokenizer.encode(render(...))` whenever no content contains special-token text.
Knows nothing of models, batching or packing (text/formats.py packs; infer/ generates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from pocketgpt.errors import DataError
from pocketgpt.text import specials

if TYPE_CHECKING:
    from pocketgpt.text.bpe import Tokenizer

ROLES = ("system", "user", "assistant", "tool")
# specials.py reserves no tool marker yet; a tokenizer without it gets the characters (see _encode_marker)
TOOL = getattr(specials, "TOOL", "<|tool|>")


@dataclass(frozen=True)
class ChatTemplate:
    """How one family of models writes a conversation. `headers` maps role -> the text that opens
    its turn; every turn ends with `close` (the turn-end marker, learned by the model) then `sep`."""

    name: str
    headers: Mapping[str, str] = field(compare=False)  # read-only; templates compare by the rest
    close: str
    sep: str
    stop: tuple[str, ...]  # what ends an assistant turn when generating: the close, and a model starting a new turn
    description: str = field(default="", compare=False)

    # --- text ------------------------------------------------------------------------------------

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True) -> str:
        """The conversation as one string; with `add_generation_prompt`, ends with the assistant header."""
        return "".join(text for text, _, _ in self._segments(messages, add_generation_prompt))

    # --- tokens ----------------------------------------------------------------------------------

    def encode(self, tokenizer: Tokenizer, messages: Sequence[Mapping],
               add_generation_prompt: bool = True) -> list[int]:
        """Token ids of `render(messages, add_generation_prompt)`, segment by segment (see module doc)."""
        return self.encode_with_mask(tokenizer, messages, add_generation_prompt)[0]

    def encode_with_mask(self, tokenizer: Tokenizer, messages: Sequence[Mapping],
                         add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """(ids, mask): mask is 1 on each assistant turn's content tokens and on the close marker
        that ends it (so the model learns to stop), 0 on everything else (SFT trains on the 1s)."""
        ids: list[int] = []
        mask: list[int] = []
        for text, is_content, train in self._segments(messages, add_generation_prompt):
            piece = tokenizer.encode(text, allowed_special="none") if is_content else _encode_marker(tokenizer, text)
            ids += piece
            mask += [int(train)] * len(piece)
        return ids, mask

    def stop_ids(self, tokenizer: Tokenizer) -> list[int]:
        """Ids that end an assistant turn in this tokenizer: each stop string that is one special
        token, plus <|endoftext|> when the tokenizer has it (a base model's natural stop)."""
        out = [tokenizer.special_tokens[s] for s in self.stop if s in tokenizer.special_tokens]
        if specials.EOT in tokenizer.special_tokens and tokenizer.special_tokens[specials.EOT] not in out:
            out.append(tokenizer.special_tokens[specials.EOT])
        return out

    # --- the one place turns are laid out --------------------------------------------------------

    def _segments(self, messages: Sequence[Mapping], add_generation_prompt: bool) -> list[tuple[str, bool, bool]]:
        """(text, is_content, trained) pieces in order; the single definition of the layout."""
        out: list[tuple[str, bool, bool]] = []
        for role, content in check_messages(messages):
            is_assistant = role == "assistant"
            out.append((self.headers[role], False, False))
            if content:
                out.append((content, True, is_assistant))
            if self.close:
                out.append((self.close, False, is_assistant))
            if self.sep:
                out.append((self.sep, False, False))
        if add_generation_prompt:
            out.append((self.headers["assistant"], False, False))
        return out


def check_messages(messages: Sequence[Mapping]) -> list[tuple[str, str]]:
    """[(role, content)] from a list of {"role", "content"} dicts, or DataError naming the bad message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise DataError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise DataError(f"message {i}: expected a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"message {i}: unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(f"message {i} ({role}): 'content' must be a string, got {type(content).__name__}")
        out.append((role, content))
    return out


def _encode_marker(tokenizer: Tokenizer, text: str) -> list[int]:
    """A marker is encoded with its special tokens as tokens; a marker the tokenizer lacks as a
    special (e.g. <|tool|> in a tokenizer trained before it was reserved) becomes its characters."""
    return tokenizer.encode(text, allowed_special="all")


POCKETGPT = ChatTemplate(
    name="pocketgpt",
    headers=MappingProxyType({"system": specials.SYSTEM, "user": specials.USER,
                              "assistant": specials.ASSISTANT, "tool": TOOL}),
    close=specials.END,
    sep="\n",
    stop=(specials.END, specials.USER, specials.SYSTEM),  # the turn's end, or the model writing the next turn
    description="pocketgpt's own role tokens (text/specials.py), reserved in every tokenizer it trains",
)
CHATML = ChatTemplate(
    name="chatml",
    headers=MappingProxyType({r: f"<|im_start|>{r}\n" for r in ROLES}),
    close="<|im_end|>",
    sep="\n",
    stop=("<|im_end|>", "<|im_start|>"),
    description="ChatML (OpenAI; SmolLM2, Qwen): <|im_start|>role\\n ... <|im_end|>",
)
PLAIN = ChatTemplate(
    name="plain",
    headers=MappingProxyType({r: f"{r.capitalize()}: " for r in ROLES}),
    close="\n",
    sep="",
    stop=("\nUser:", "\nSystem:"),
    description="plain text for tokenizers without chat tokens (GPT-2): 'User: ...\\nAssistant: ...'",
)
TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (POCKETGPT, CHATML, PLAIN)}


def get_template(name: str) -> ChatTemplate:
    """A template by name: pocketgpt, chatml or plain."""
    if name not in TEMPLATES:
        raise DataError(f"unknown chat template {name!r}; use one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_for(tokenizer: Tokenizer) -> ChatTemplate:
    """The template a tokenizer was made for: pocketgpt if it has <|user|>, chatml if <|im_start|>, else plain."""
    have = tokenizer.special_tokens
    if specials.USER in have:
        return POCKETGPT
    if "<|im_start|>" in have:
        return CHATML
    return PLAIN
