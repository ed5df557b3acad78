"""Seeing tokens: the "Str-aw-berry" view, each token on an alternating background with its id.

A token is a run of bytes, not of characters: a Chinese character (3 UTF-8 bytes) may be split
across tokens, so a token can hold part of a character. Such bytes are shown as hex, `<e5 ba>`,
instead of a replacement character that would hide how the text was cut.
Knows nothing of how tokens are made; takes a Tokenizer and text.
"""

from __future__ import annotations

import regex

from pocketgpt.text.bpe import Tokenizer

BACKGROUNDS = ("on #2d4f7c", "on #7c4f2d", "on #2d7c4f", "on #6a2d7c")
# a "word" for the per-word count: a run of non-space, non-Han characters, or one Han character
# (Chinese has no spaces; a character is the unit a reader counts)
WORD = regex.compile(r"\p{Han}|[^\s\p{Han}]+")


def token_label(token: bytes) -> str:
    """The token's text, with bytes that are not a whole UTF-8 character shown as `<e5 ba>`."""
    # surrogateescape turns each undecodable byte into U+DC80..U+DCFF, which we group into hex
    text = token.decode("utf-8", errors="surrogateescape")
    return regex.sub(
        r"[\udc80-\udcff]+",
        lambda m: "<" + " ".join(f"{ord(c) - 0xDC00:02x}" for c in m.group()) + ">",
        text,
    )


def token_table(tok: Tokenizer, text: str) -> dict:
    """Tokens of `text` with ids, bytes and labels, plus per-character and per-word counts."""
    ids = tok.encode(text)
    tokens = []
    for i in ids:
        b = tok.token_bytes(i)
        tokens.append({"id": i, "bytes": b.hex(" "), "text": token_label(b)})
    n_chars, n_words = len(text), len(WORD.findall(text))
    return {
        "tokenizer": tok.name,
        "n_tokens": len(ids),
        "n_chars": n_chars,
        "n_words": n_words,
        "n_bytes": len(text.encode("utf-8")),
        "tokens_per_char": round(len(ids) / n_chars, 3) if n_chars else 0.0,
        "tokens_per_word": round(len(ids) / n_words, 3) if n_words else 0.0,
        "tokens": tokens,
    }


def render(table: dict, show_ids: bool = True, separator: str = ""):
    """A rich renderable: the coloured token strip, the ids, and the counts. Without colours
    (output to a file or pipe) pass a `separator` such as "|" to keep the boundaries visible."""
    from rich.console import Group
    from rich.text import Text

    strip = Text()
    for k, t in enumerate(table["tokens"]):
        if separator and k:
            strip.append(separator, style="dim")
        # make whitespace visible: a leading space is part of the token, which is the lesson
        label = t["text"].replace("\n", "\\n").replace("\t", "\\t")
        strip.append(label, style=f"bold white {BACKGROUNDS[k % len(BACKGROUNDS)]}")
    parts = [strip]
    if show_ids:
        parts.append(Text(" ".join(str(t["id"]) for t in table["tokens"]), style="dim"))
    parts.append(
        Text(
            f"{table['n_tokens']} tokens, {table['n_chars']} chars, {table['n_words']} words, {table['n_bytes']} bytes "
            f"({table['tokens_per_char']} tokens/char, {table['tokens_per_word']} tokens/word) [{table['tokenizer']}]"
        )
    )
    return Group(*parts)
