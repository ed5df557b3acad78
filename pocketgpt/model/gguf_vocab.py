"""The vocabulary inside a GGUF file <-> tokenizer files in our model directory.

A GGUF "gpt2"-model tokenizer is a list of tokens by id (GPT-2 byte-to-unicode strings), a token type
per id (1 normal, 3 control, 4 user-defined), BPE merges in priority order and a pre-tokenizer
*name* (`tokenizer.ggml.pre`) for which llama.cpp keeps the regex. `PRE_PATTERNS` holds those regexes.

Our `Tokenizer` keeps the file's ids exactly (renumbering would move the model's embedding rows):
normal tokens become mergeable tokens, control and user-defined tokens become special tokens, in
whatever layout the file uses. SmolLM2 puts its 17 special tokens at ids 0..16 and has no token for
21 bytes; that is fine as long as merged-token ids rise in merge order (tiktoken merges by id).
The import also writes the same vocabulary as a Hugging Face `tokenizer.json`, an extra file for
transformers users that `export hf` carries along. Knows nothing of tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketgpt.atomic import atomic_write
from pocketgpt.errors import TokenizerError
from pocketgpt.text.bpe_pretokenize import CL100K_PATTERN, GPT2_PATTERN, SMOLLM_PATTERN

CHAT_TEMPLATE_FILE = "chat_template.jinja"
HF_TOKENIZER_FILE = "tokenizer.json"
NORMAL, CONTROL = 1, 3  # llama.cpp's llama_token_type
# llama.cpp pre-tokenizer name -> our pattern name and its regex (the same splits)
PRE_PATTERNS = {
    "gpt-2": ("gpt2", GPT2_PATTERN),
    "llama-bpe": ("cl100k", CL100K_PATTERN),
    "smollm": ("smollm", SMOLLM_PATTERN),
}
# our pattern name -> the `tokenizer.ggml.pre` whose regex llama.cpp applies (the same splits)
PRE_NAMES = {ours: pre for pre, (ours, _) in PRE_PATTERNS.items()}


@dataclass
class GGUFVocab:
    """A vocabulary as GGUF stores it: token strings by id, their types, merges by priority."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos_id: int
    eos_id: int


def vocab_from_tokenizer(tok, config) -> GGUFVocab:
    """Our `Tokenizer` (ids unchanged; specials become control tokens); bos/eos from the config, else
    `<|endoftext|>`."""
    from pocketgpt.text.bpe_files import to_unicode

    if tok.pattern not in PRE_NAMES:
        raise TokenizerError(f"tokenizer pattern {tok.pattern!r} has no llama.cpp pre-tokenizer; "
                             f"export tokenizers trained with --pattern {' or '.join(PRE_NAMES)}")
    tokens, types = [""] * tok.vocab_size, [NORMAL] * tok.vocab_size
    for b, i in tok.ranks.items():
        tokens[i] = to_unicode(b)
    for text, i in tok.special_tokens.items():
        tokens[i], types[i] = text, CONTROL
    eot = tok.special_tokens.get("<|endoftext|>", -1)
    return GGUFVocab(tokens, types, [f"{tokens[a]} {tokens[b]}" for a, b in tok.merges], PRE_NAMES[tok.pattern],
                     config.bos_id if config.bos_id >= 0 else eot, config.eos_id if config.eos_id >= 0 else eot)


def vocab_from_hf_json(model_dir: Path, config) -> GGUFVocab:
    """The `tokenizer.json` a GGUF import wrote (pre-tokenizer name kept in config.extra["gguf_pre"])."""
    path = model_dir / HF_TOKENIZER_FILE
    if not path.is_file() or config.extra.get("gguf_pre") not in PRE_PATTERNS:
        raise TokenizerError(f"{model_dir}: no tokenizer files; a GGUF file must carry its vocabulary "
                             "(save the model with its tokenizer)")
    d = json.loads(path.read_text(encoding="utf-8"))
    vocab = d["model"]["vocab"]
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    types = [NORMAL] * len(tokens)
    for added in d["added_tokens"]:
        types[added["id"]] = CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    return GGUFVocab(tokens, types, merges, config.extra["gguf_pre"], config.bos_id, config.eos_id)


def write_vocab(w, v: GGUFVocab) -> None:
    """The tokenizer.ggml.* keys llama.cpp's BPE ("gpt2") tokenizer reads."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    w.add_add_bos_token(False)
    if v.bos_id >= 0:
        w.add_bos_token_id(v.bos_id)
    if v.eos_id >= 0:
        w.add_eos_token_id(v.eos_id)


def save_gguf_tokenizer(meta: dict[str, Any], out: Path):
    """Our `Tokenizer` for the file's vocabulary, same ids (the caller saves it). Also writes the
    vocabulary as `tokenizer.json` into `out`. A layout tiktoken cannot carry (merged-token ids not
    rising in merge order) returns None: then `tokenizer.json` is the only copy of the vocabulary."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise TokenizerError(f"GGUF tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported; "
                             "pocketgpt reads byte-level BPE ('gpt2') vocabularies")
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_PATTERNS:
        raise TokenizerError(f"GGUF pre-tokenizer {pre!r} is not supported; known: {', '.join(PRE_PATTERNS)}")
    tokens, merges = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / HF_TOKENIZER_FILE, json.dumps(hf_tokenizer_json(tokens, types, merges, pre), ensure_ascii=False))
    try:
        return tokenizer_from_gguf(tokens, types, merges, pre)
    except TokenizerError:
        return None


def tokenizer_from_gguf(tokens: list[str], types: list[int], merges: list[str], pre: str):
    """A `Tokenizer` with exactly the file's ids: normal tokens are mergeable (GPT-2 byte-to-unicode
    strings), every other type is a special token. Raises TokenizerError when tiktoken cannot carry it."""
    from pocketgpt.text.bpe import Tokenizer
    from pocketgpt.text.bpe_files import from_unicode

    vocab = {tok: i for i, (tok, ty) in enumerate(zip(tokens, types, strict=True)) if ty == NORMAL}
    ranks = {from_unicode(tok, "tokenizer.ggml.tokens"): i for tok, i in vocab.items()}
    specials = {tok: i for i, (tok, ty) in enumerate(zip(tokens, types, strict=True)) if ty != NORMAL}
    pairs = [m.split(" ") for m in merges]
    if any(len(p) != 2 or p[0] not in vocab or p[1] not in vocab for p in pairs):
        raise TokenizerError("GGUF merges name tokens that are not in tokenizer.ggml.tokens")
    pattern, pat = PRE_PATTERNS[pre]
    return Tokenizer(ranks, specials, pattern=pattern, pat_str=pat,
                     merges=[(vocab[a], vocab[b]) for a, b in pairs], name="gguf")


def hf_tokenizer_json(tokens: list[str], types: list[int], merges: list[str], pre: str) -> dict[str, Any]:
    """The vocabulary as a Hugging Face `tokenizers` JSON: split by the regex, map bytes to GPT-2's
    unicode stand-ins, BPE; control tokens are also added tokens (matched whole, never split)."""
    specials = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True} for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
                if ty != NORMAL]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": specials, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_PATTERNS[pre][1]}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": merges},
    }
