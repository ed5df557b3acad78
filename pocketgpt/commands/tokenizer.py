"""`pocketgpt tokenizer train|encode|decode|show`: thin verbs over pocketgpt.text.bpe."""

from __future__ import annotations

import argparse
import json
import time

from pocketgpt.commands import add_group, add_verb, emit
from pocketgpt.errors import DataError, TokenizerError

DEMO = "It is a truth universally acknowledged... 床前明月光，疑是地上霜。"


def register(sub: argparse._SubParsersAction) -> None:
    g = add_group(sub, "tokenizer", help="train, apply and inspect byte-level BPE tokenizers",
                  example=f'pocketgpt tokenizer show --tokenizer gpt2 "{DEMO}"')
    p = add_verb(g, "train", help="learn a BPE vocabulary from corpora",
                 example="pocketgpt tokenizer train --corpus austen tang --vocab-size 2048 --out out/tok", func=train)
    p.add_argument("--corpus", nargs="+", default=["default"], metavar="SPEC",
                   help="corpus names (austen, peoples_daily, tang, en, zh, default) or UTF-8 files")
    p.add_argument("--vocab-size", type=int, default=4096, help="256 bytes + merges + special tokens (default 4096)")
    p.add_argument("--out", required=True, help="directory to write the tokenizer files into")
    p.add_argument("--pattern", choices=["gpt2", "cl100k"], default="gpt2", help="pre-split regex (default gpt2)")
    p.add_argument("--special", nargs="*", default=None, metavar="TOK",
                   help="special tokens (default <|endoftext|>)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="how to treat bad UTF-8")
    for name, fn, what in (("encode", encode, "text -> token ids"), ("show", show, "tokens with coloured boundaries")):
        p = add_verb(g, name, help=what, func=fn,
                     example=f'pocketgpt tokenizer {name} --tokenizer gpt2 "A journey of a thousand miles"')
        p.add_argument("text", nargs="?", help="the text (or use --file)")
        _common(p)
    p = add_verb(g, "decode", help="token ids -> text", func=decode,
                 example="pocketgpt tokenizer decode --tokenizer gpt2 32 7002 286 257 7319 4608")
    p.add_argument("ids", nargs="*", type=int, help="token ids (or --file with ids as JSON or separated by spaces)")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default="gpt2", help="gpt2, or a tokenizer / model directory (default gpt2)")
    p.add_argument("--file", help="read the input from this UTF-8 file")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="how to treat bad UTF-8")


def train(args: argparse.Namespace) -> int:
    from pocketgpt.text.bpe import EOT, Tokenizer, check_vocab_size
    from pocketgpt.text.corpora import read_corpus

    specials = [EOT] if args.special is None else args.special
    check_vocab_size(args.vocab_size, len(set(specials)))  # before reading a large corpus
    text = "\n".join(read_corpus(spec, errors=args.errors) for spec in args.corpus)
    t0 = time.perf_counter()
    tok = Tokenizer.train(text, args.vocab_size, pattern=args.pattern, special_tokens=specials,
                          progress=not args.json)
    out = tok.save(args.out)
    info = {"out": str(out), "vocab_size": tok.vocab_size, "merges": len(tok.merges), "pattern": tok.pattern,
            "special_tokens": tok.special_tokens, "corpus_chars": len(text),
            "seconds": round(time.perf_counter() - t0, 2)}
    short = "" if len(tok.merges) + 256 + len(specials) == args.vocab_size else " (the corpus ran out of pairs)"
    emit(args, info, f"trained {tok.vocab_size} tokens ({len(tok.merges)} merges{short}) in {info['seconds']} s "
                     f"-> {out}")
    return 0


def _input_text(args: argparse.Namespace) -> str:
    from pocketgpt.text.textfile import read_text

    if args.file:
        return read_text(args.file, errors=args.errors)
    if args.text is None:
        raise DataError("no input: give the text as an argument or use --file PATH")
    return args.text


def encode(args: argparse.Namespace) -> int:
    from pocketgpt.text.bpe import load_tokenizer

    ids = load_tokenizer(args.tokenizer).encode(_input_text(args))
    emit(args, ids, " ".join(map(str, ids)))
    return 0


def decode(args: argparse.Namespace) -> int:
    from pocketgpt.text.bpe import load_tokenizer
    from pocketgpt.text.textfile import read_text

    ids = list(args.ids)
    if args.file:
        raw = read_text(args.file).strip()
        try:
            ids = json.loads(raw) if raw.startswith("[") else [int(x) for x in raw.split()]
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise DataError(f"{args.file}: expected token ids as a JSON list or separated by spaces")
    if not ids:
        raise TokenizerError("no token ids: give them as arguments or use --file PATH")
    text = load_tokenizer(args.tokenizer).decode(ids)
    emit(args, {"text": text}, text)
    return 0


def show(args: argparse.Namespace) -> int:
    from pocketgpt.text.bpe import load_tokenizer
    from pocketgpt.text.tokenview import render, token_table

    table = token_table(load_tokenizer(args.tokenizer), _input_text(args))

    def human() -> None:
        from rich.console import Console

        console = Console(highlight=False, soft_wrap=True)
        # colours mark the boundaries on a terminal; in a pipe or file a "|" does
        console.print(render(table, separator="" if console.is_terminal else "|"))

    emit(args, table, human)
    return 0
