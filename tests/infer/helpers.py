"""Tiny models and tokenizers shared by the inference tests."""

from __future__ import annotations

import torch

from pocketgpt.config import ModelConfig
from pocketgpt.model.gpt import GPT
from pocketgpt.text.bpe import Tokenizer

LLAMA = dict(positions="rope", norm="rmsnorm", activation="swiglu", bias=False, n_kv_head=1)


def tiny_gpt(vocab_size: int = 64, block_size: int = 48, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    shape = {"n_layer": 2, "n_head": 2, "d_model": 32, **kw}
    return GPT(ModelConfig(vocab_size=vocab_size, block_size=block_size, **shape)).eval()


def byte_tokenizer() -> Tokenizer:
    """One token per byte (no merges): every Chinese character is split across three tokens."""
    return Tokenizer({bytes([b]): b for b in range(256)}, {"<|endoftext|>": 256})


def zh_tokenizer() -> Tokenizer:
    """A small BPE trained on mixed Chinese/English text: merges that cut characters at odd places."""
    text = "周一上班真的很爽。周一上班真的很丧！今天天气很好。It is a truth universally acknowledged. " * 20
    return Tokenizer.train(text, 300, progress=False)
