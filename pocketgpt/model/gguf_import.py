"""GGUF import: a llama.cpp `.gguf` file (architecture gpt2 or llama) -> our model directory.

    metadata  {arch}.block_count, .embedding_length, ...  -> ModelConfig
    tensors   blk.N.attn_q ... (F32/F16/BF16/Q8_0/Q4_0/Q4_1) -> dequantised fp32, our names and layouts
    tokenizer tokenizer.ggml.tokens/merges/token_type/pre   -> our tokenizer files (+ tokenizer.json)
    template  tokenizer.chat_template                       -> chat_template.jinja

Quantised tensors are expanded with `gguf.quants.dequantize`, the same arithmetic llama.cpp and
transformers use, so the imported fp32 weights are exactly the numbers the file encodes. llama q/k
rows come back from llama.cpp's interleaved RoPE layout to rotate_half (`rope_unpermute`, the inverse
of gguf_export.rope_permute). Knows nothing of writing GGUF.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pocketgpt.atomic import atomic_write
from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.gguf_export import LAYER_NAMES, TOP_NAMES
from pocketgpt.model.gguf_vocab import CHAT_TEMPLATE_FILE, save_gguf_tokenizer

ARCHS = ("gpt2", "llama")
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


def import_gguf(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert the GGUF file at `path` into our model directory `out` (weights in fp32)."""
    from gguf import GGUFReader

    from pocketgpt.model.checkpoint import build_model, check_state_dict, save_model

    path = Path(path)
    if not path.is_file():
        raise ConfigMismatch(f"{path}: no such GGUF file")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise ConfigMismatch(f"{path}: not a readable GGUF file ({e})") from None
    meta = {k: _value(f) for k, f in reader.fields.items()}
    raw = {t.name: t for t in reader.tensors}
    config = config_from_gguf(meta, raw, source=path.name)
    sd = state_dict_from_gguf({name: dequantize(t) for name, t in raw.items()}, config)
    model = build_model(config)
    check_state_dict(model, sd, where=str(path))
    model.load_state_dict(sd, strict=False)
    out = Path(out)
    tok = save_gguf_tokenizer(meta, out)
    config.extra["gguf_pre"] = meta.get("tokenizer.ggml.pre", "gpt-2")
    if meta.get("tokenizer.chat_template"):
        atomic_write(out / CHAT_TEMPLATE_FILE, meta["tokenizer.chat_template"])
        config.extra["chat_template"] = CHAT_TEMPLATE_FILE
    return save_model(model, out, tokenizer=tok)


def config_from_gguf(meta: dict[str, Any], tensors: dict[str, Any], source: str = "") -> ModelConfig:
    """ModelConfig from GGUF metadata; tied output when the file has no separate `output.weight`
    (llama) or when it equals `token_embd.weight` (gpt2 files repeat it)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise ConfigMismatch(f"{source}: GGUF architecture {arch!r} is not supported; pocketgpt imports "
                             f"{' and '.join(ARCHS)}")
    a = f"{arch}."
    n_vocab = len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else meta[a + "vocab_size"]
    common = dict(vocab_size=n_vocab, block_size=meta[a + "context_length"], n_layer=meta[a + "block_count"],
                  n_head=meta[a + "attention.head_count"], d_model=meta[a + "embedding_length"],
                  d_ff=meta[a + "feed_forward_length"], bos_id=meta.get("tokenizer.ggml.bos_token_id", -1),
                  eos_id=meta.get("tokenizer.ggml.eos_token_id", -1),
                  pad_id=meta.get("tokenizer.ggml.padding_token_id", -1),
                  extra={"imported_from": f"gguf:{arch}", "source": source, "name": meta.get("general.name", "")})
    if arch == "gpt2":
        tied = "output.weight" not in tensors or _same(tensors["output.weight"], tensors["token_embd.weight"])
        return ModelConfig(**common, norm_eps=meta[a + "attention.layer_norm_epsilon"], tie_embeddings=tied)
    n_head = meta[a + "attention.head_count"]
    head_dim = meta.get(a + "attention.key_length") or meta.get(a + "rope.dimension_count")
    return ModelConfig(**common, n_kv_head=meta.get(a + "attention.head_count_kv", n_head), head_dim=head_dim,
                       activation="swiglu", norm="rmsnorm", positions="rope", bias=False,
                       norm_eps=meta[a + "attention.layer_norm_rms_epsilon"],
                       rope_theta=meta.get(a + "rope.freq_base", 10000.0),
                       tie_embeddings="output.weight" not in tensors)


def state_dict_from_gguf(t: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """llama.cpp tensor names -> ours (the inverse of gguf_export.gguf_tensors)."""
    ours_layer = {v: k for k, v in LAYER_NAMES.items()}
    ours_top = {v: k for k, v in TOP_NAMES.items()}
    if c.flavour == "llama":
        for i in range(c.n_layer):
            q = rope_unpermute(t.pop(f"blk.{i}.attn_q.weight"), c.n_head)
            k = rope_unpermute(t.pop(f"blk.{i}.attn_k.weight"), c.n_kv_head)
            t[f"blk.{i}.attn_qkv.weight"] = torch.cat([q, k, t.pop(f"blk.{i}.attn_v.weight")], dim=0)
    if c.tie_embeddings:
        t.pop("output.weight", None)
    sd: dict[str, torch.Tensor] = {}
    for name, x in t.items():
        parts = name.split(".")
        if parts[0] == "blk":
            if parts[2] not in ours_layer:
                raise ConfigMismatch(f"GGUF tensor {name} has no place in a pocketgpt {c.flavour} model")
            sd[f"blocks.{parts[1]}.{ours_layer[parts[2]]}.{parts[3]}"] = x
        elif parts[0] in ours_top:
            sd[f"{ours_top[parts[0]]}.{parts[1]}"] = x
        elif parts[0] != "rope_freqs":  # rope_freqs only rescales long contexts; we refuse nothing silently
            raise ConfigMismatch(f"GGUF tensor {name} has no place in a pocketgpt {c.flavour} model")
    return sd


def rope_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Interleaved RoPE rows (llama.cpp) back to rotate_half rows: row (h, j, s) -> (h, s, j)."""
    rows, C = w.shape
    hs = rows // n_head
    return w.reshape(n_head, hs // 2, 2, C).transpose(1, 2).reshape(rows, C)  # (nh * hs, C)


def dequantize(t: Any) -> torch.Tensor:
    """One GGUF tensor as an fp32 torch tensor in torch layout (rows = output features)."""
    import gguf

    kind = t.tensor_type.name
    if kind not in TENSOR_TYPES:
        raise ConfigMismatch(f"GGUF tensor {t.name} has type {kind}; pocketgpt dequantises "
                             f"{', '.join(TENSOR_TYPES)} (requantise the file, e.g. llama-quantize ... Q8_0)")
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims fastest-first
    data = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    return torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))  # a copy: the file is mapped read-only


def _same(a: Any, b: Any) -> bool:
    return a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data))


def _value(field: Any) -> Any:
    """A metadata field as a Python value (numpy scalars become int/float)."""
    v = field.contents()
    return v.item() if isinstance(v, np.generic) else v
