"""A tiny chat model directory for the store, run and server tests: a 2-layer GPT (d_model 64)
over a 400-token BPE trained on a little English + Chinese text with pocketgpt's reserved specials.
The weights are random, so the text it writes is noise, but every mechanism around it is real."""

from __future__ import annotations

from pathlib import Path

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. 周一上班真的很爽。今天天气很好，我们去公园散步吧。"
        "Elizabeth smiled and said nothing. 你好，世界！The quick brown fox jumps over the lazy dog. ") * 12


def make_tiny_model(out: Path, seed: int = 0, vocab_size: int = 400, block_size: int = 128) -> Path:
    """Write a tiny model directory (config.json, model.safetensors, tokenizer files) to `out`."""
    import torch

    from pocketgpt.config import get_preset
    from pocketgpt.model.checkpoint import build_model, save_model
    from pocketgpt.text import specials
    from pocketgpt.text.bpe import Tokenizer

    tok = Tokenizer.train(TEXT, vocab_size, special_tokens=specials.RESERVED, progress=False)
    config = get_preset("tiny").replace(n_layer=2, d_model=64, n_head=2, vocab_size=tok.vocab_size, block_size=block_size)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    return save_model(model, out, tokenizer=tok)
