"""GGUF export: our model directory -> one `.gguf` file that llama.cpp (and Ollama) run.

GGUF is llama.cpp's container: a header of typed key/value metadata (`gpt2.block_count`,
`tokenizer.ggml.tokens`, ...) followed by named tensors, each F32, F16 or block-quantised (Q8_0: blocks
of 32 weights sharing one fp16 scale). We write it with the `gguf` package's GGUFWriter, using the
tensor names llama.cpp's loaders look up (`TENSOR_NAMES` below) and the metadata keys they read.

The one non-obvious step: llama.cpp's llama loader expects q/k rows in the *interleaved* RoPE layout
(pairs (x0, x1), (x2, x3), ... rotate together), while we, like transformers, rotate the first half of
each head against the second (`rotate_half`). `rope_permute` reorders the rows of each head so both
compute the same thing; gguf_import.py undoes it. Knows nothing of reading GGUF or running llama.cpp.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pocketgpt.atomic import atomic_path
from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.gguf_vocab import vocab_from_hf_json, vocab_from_tokenizer, write_vocab

QUANTS = ("f32", "f16", "q8_0")
# ours (within blocks.N.) -> llama.cpp (within blk.N.); the llama flavour splits attn.qkv into q/k/v
LAYER_NAMES = {
    "ln1": "attn_norm", "attn.qkv": "attn_qkv", "attn.proj": "attn_output", "ln2": "ffn_norm",
    "mlp.fc": "ffn_up", "mlp.gate": "ffn_gate", "mlp.proj": "ffn_down",
}
TOP_NAMES = {"tok_emb": "token_embd", "pos_emb": "position_embd", "ln_f": "output_norm", "lm_head": "output"}


def export_gguf(model_dir: str | os.PathLike, out: str | os.PathLike, quant: str = "f32") -> Path:
    """Write the model directory `model_dir` (with its tokenizer) as a GGUF file at `out`, atomically."""
    import gguf

    from pocketgpt.model.checkpoint import load_model

    if quant not in QUANTS:
        raise ConfigMismatch(f"--quant {quant!r} is not supported; use one of {', '.join(QUANTS)}")
    model, tok = load_model(model_dir)
    c = model.config
    arch = _check_arch(c)
    vocab = vocab_from_tokenizer(tok, c) if tok is not None else vocab_from_hf_json(Path(model_dir), c)
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        _write_hparams(w, c, arch, quant)
        write_vocab(w, vocab)
        template = Path(model_dir) / str(c.extra.get("chat_template", ""))
        if template.is_file():  # Ollama and llama.cpp's chat mode format conversations with it
            w.add_chat_template(template.read_text(encoding="utf-8"))
        for name, t in gguf_tensors(model.state_dict(), c, arch).items():
            _add_tensor(w, name, t, quant)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return Path(out)


def _check_arch(c: ModelConfig) -> str:
    """'gpt2' or 'llama' (llama.cpp's architecture names), or a ConfigMismatch naming what does not fit."""
    from pocketgpt.model.hf import check_exportable

    check_exportable(c)  # the same two layouts llama.cpp's gpt2 and llama loaders expect
    return c.flavour


def _write_hparams(w, c: ModelConfig, arch: str, quant: str) -> None:
    import gguf

    w.add_name(str(c.extra.get("name", "pocketgpt")))
    w.add_context_length(c.block_size)
    w.add_embedding_length(c.d_model)
    w.add_feed_forward_length(c.d_ff)
    w.add_block_count(c.n_layer)
    w.add_head_count(c.n_head)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant])
    if arch == "gpt2":
        w.add_layer_norm_eps(c.norm_eps)
    else:
        w.add_head_count_kv(c.n_kv_head)
        w.add_layer_norm_rms_eps(c.norm_eps)
        w.add_rope_freq_base(c.rope_theta)
        w.add_rope_dimension_count(c.head_dim)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_vocab_size(c.vocab_size)


def gguf_tensors(sd: dict[str, torch.Tensor], c: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """Our state dict -> llama.cpp tensor names (torch (out, in) layout; the writer reverses dims)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        parts = name.split(".")
        if parts[0] == "blocks":
            module, kind = ".".join(parts[2:-1]), parts[-1]
            out[f"blk.{parts[1]}.{LAYER_NAMES[module]}.{kind}"] = t
        else:
            out[f"{TOP_NAMES[parts[0]]}.{parts[-1]}"] = t
    if c.tie_embeddings:  # llama.cpp's llama loader falls back to token_embd; gpt2 wants output itself
        out.pop("output.weight", None)
        if arch == "gpt2":
            out["output.weight"] = sd["tok_emb.weight"]
    if arch == "llama":
        for i in range(c.n_layer):
            q, k, v = out.pop(f"blk.{i}.attn_qkv.weight").split(
                [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim], dim=0)
            out[f"blk.{i}.attn_q.weight"] = rope_permute(q, c.n_head)
            out[f"blk.{i}.attn_k.weight"] = rope_permute(k, c.n_kv_head)
            out[f"blk.{i}.attn_v.weight"] = v
    return out


def rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k rows from the rotate_half layout (per head: [x0..x_{d/2-1} | x_{d/2}..x_{d-1}], dim i rotating
    with i + d/2) to llama.cpp's interleaved layout (dim 2i rotating with 2i + 1): row (h, s, j) -> (h, j, s)."""
    rows, C = w.shape
    hs = rows // n_head
    return w.reshape(n_head, 2, hs // 2, C).transpose(1, 2).reshape(rows, C)  # (nh * hs, C)


def _add_tensor(w, name: str, t: torch.Tensor, quant: str) -> None:
    """Norms, biases and any 1-D tensor stay F32 (llama.cpp wants them so); matrices take `quant`,
    except Q8_0 on a row that is not a whole number of 32-weight blocks, which falls back to F16."""
    import gguf

    data = t.detach().float().cpu().numpy()
    if data.ndim == 1 or quant == "f32":
        w.add_tensor(name, data.astype(np.float32))
    elif quant == "q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(name, data.astype(np.float16))
