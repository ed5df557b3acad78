"""Hugging Face interop: a `transformers` GPT-2 (or Llama) directory <-> our model directory.

    import: config.json + model.safetensors | pytorch_model.bin + vocab.json + merges.txt -> ours
    export: ours -> config.json (GPT2LMHeadModel | LlamaForCausalLM) + model.safetensors + vocab.json + merges.txt

Only names and layouts change; no number does. Two layout facts carry the whole mapping:
  - GPT-2 stores its linear layers as `Conv1D`, weight (in, out): the transpose of `nn.Linear`'s
    (out, in), and fuses q, k, v into one `c_attn` exactly as our `attn.qkv` does ([q | k | v] rows).
  - Llama keeps q_proj, k_proj, v_proj apart; we concatenate them. Both use the `rotate_half` RoPE
    layout, so nothing is permuted (the GGUF files of llama.cpp are different: see gguf_import.py).
Knows nothing of GGUF, training or tokenization beyond copying the vocabulary files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pocketgpt.atomic import atomic_path, atomic_write
from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch

GPT2_LAYER = {  # ours (within blocks.N.) -> HF GPT-2 (within h.N.); True = Conv1D weight, transpose it
    "ln1.weight": ("ln_1.weight", False), "ln1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True), "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True), "attn.proj.bias": ("attn.c_proj.bias", False),
    "ln2.weight": ("ln_2.weight", False), "ln2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True), "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True), "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
GPT2_TOP = {"tok_emb.weight": "wte.weight", "pos_emb.weight": "wpe.weight",
            "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
LLAMA_LAYER = {  # ours -> HF Llama (within model.layers.N.); attn.qkv is split into q/k/v_proj
    "ln1.weight": "input_layernorm.weight", "attn.proj.weight": "self_attn.o_proj.weight",
    "ln2.weight": "post_attention_layernorm.weight", "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.fc.weight": "mlp.up_proj.weight", "mlp.proj.weight": "mlp.down_proj.weight",
}


# -- configs --------------------------------------------------------------------------------------
def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a transformers config.json (model_type gpt2 or llama)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigMismatch(f"GPT-2 activation_function {act!r} is not supported; only gelu_new (tanh GELU)")
        return ModelConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"],
            d_model=hf["n_embd"], d_ff=hf.get("n_inner") or 4 * hf["n_embd"], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=hf.get("tie_word_embeddings", True), bos_id=_id(hf.get("bos_token_id")),
            eos_id=_id(hf.get("eos_token_id")), extra={"imported_from": "hf:gpt2"})
    if kind == "llama":
        return ModelConfig(
            vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"], n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            d_model=hf["hidden_size"], d_ff=hf["intermediate_size"], head_dim=hf.get("head_dim"),
            activation="swiglu", norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), positions="rope",
            rope_theta=hf.get("rope_theta", 10000.0), bias=False, tie_embeddings=hf.get("tie_word_embeddings", False),
            bos_id=_id(hf.get("bos_token_id")), eos_id=_id(hf.get("eos_token_id")),
            extra={"imported_from": "hf:llama"})
    raise ConfigMismatch(f"Hugging Face model_type {kind!r} is not supported; pocketgpt imports gpt2 and llama")


def config_to_hf(c: ModelConfig) -> dict:
    """transformers config.json for our config; refuses what neither GPT2LMHeadModel nor LlamaForCausalLM is."""
    check_exportable(c)
    common = {"vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings, "torch_dtype": "float32",
              "bos_token_id": c.bos_id if c.bos_id >= 0 else None, "eos_token_id": c.eos_id if c.eos_id >= 0 else None}
    if c.flavour == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": c.block_size,
                "n_embd": c.d_model, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.d_ff,
                "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0, **common}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": c.block_size,
            "hidden_size": c.d_model, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim, "intermediate_size": c.d_ff,
            "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
            "attention_bias": False, "mlp_bias": False, **common}


def check_exportable(c: ModelConfig) -> None:
    """Raise ConfigMismatch naming the first feature that HF GPT-2 / Llama cannot express."""
    gpt2 = (c.positions, c.norm, c.activation, c.bias) == ("learned", "layernorm", "gelu_tanh", True)
    problems = [
        (c.arch != "gpt", f"arch {c.arch!r} (only decoder-only 'gpt' models)"),
        (c.n_expert > 0, "mixture-of-experts blocks"),
        (c.norm_placement != "pre", "post-LN blocks"),
        (not gpt2 and (c.flavour != "llama" or c.bias), "this mix of positions/norm/activation/bias"),
        (gpt2 and (c.n_kv_head != c.n_head or c.head_dim * c.n_head != c.d_model), "GQA or a custom head_dim in GPT-2"),
    ]
    for bad, what in problems:
        if bad:
            raise ConfigMismatch(f"cannot export {what}: Hugging Face GPT2LMHeadModel/LlamaForCausalLM have no "
                                 "such layout; export the gpt2 or llama flavour (pre-LN, no MoE)")


def _id(x: int | list | None) -> int:
    if isinstance(x, list):
        x = x[0] if x else None
    return -1 if x is None else int(x)


# -- state dicts ----------------------------------------------------------------------------------
def state_dict_from_hf(hf_sd: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """HF tensors (any of the usual prefixes) -> our state-dict names and layouts."""
    sd = {_strip(k): v for k, v in hf_sd.items()}
    out: dict[str, torch.Tensor] = {}
    if c.flavour == "gpt2":
        for ours, theirs in GPT2_TOP.items():
            out[ours] = sd[theirs]
        for i in range(c.n_layer):
            for ours, (theirs, conv) in GPT2_LAYER.items():
                t = sd[f"h.{i}.{theirs}"]
                out[f"blocks.{i}.{ours}"] = t.t().contiguous() if conv else t
    else:
        out["tok_emb.weight"], out["ln_f.weight"] = sd["embed_tokens.weight"], sd["norm.weight"]
        for i in range(c.n_layer):
            p = f"layers.{i}."
            for ours, theirs in LLAMA_LAYER.items():
                out[f"blocks.{i}.{ours}"] = sd[p + theirs]
            qkv = [sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv, dim=0)  # ((nh + 2 nkv) hs, C)
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensors -> the names save_pretrained writes (tied lm_head omitted, as HF does)."""
    out: dict[str, torch.Tensor] = {}
    if c.flavour == "gpt2":
        for ours, theirs in GPT2_TOP.items():
            out[f"transformer.{theirs}"] = sd[ours]
        for i in range(c.n_layer):
            for ours, (theirs, conv) in GPT2_LAYER.items():
                t = sd[f"blocks.{i}.{ours}"]
                out[f"transformer.h.{i}.{theirs}"] = t.t() if conv else t
    else:
        out["model.embed_tokens.weight"], out["model.norm.weight"] = sd["tok_emb.weight"], sd["ln_f.weight"]
        sizes = [c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.n_kv_head * c.head_dim]
        for i in range(c.n_layer):
            p = f"model.layers.{i}."
            for ours, theirs in LLAMA_LAYER.items():
                out[p + theirs] = sd[f"blocks.{i}.{ours}"]
            for x, t in zip("qkv", sd[f"blocks.{i}.attn.qkv.weight"].split(sizes, dim=0), strict=True):
                out[p + f"self_attn.{x}_proj.weight"] = t
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def _strip(name: str) -> str:
    for prefix in ("transformer.", "model."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


# -- directories ----------------------------------------------------------------------------------
def import_hf(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a Hugging Face GPT-2 / Llama directory into our model directory at `out`."""
    from pocketgpt.model.checkpoint import build_model, check_state_dict, save_model

    src = Path(src)
    if not (src / "config.json").is_file():
        raise ConfigMismatch(f"{src}: no config.json; give a Hugging Face model directory (save_pretrained output)")
    config = config_from_hf(json.loads((src / "config.json").read_text(encoding="utf-8")))
    config.extra["source"] = str(src)
    try:
        sd = state_dict_from_hf(read_hf_weights(src), config)
    except KeyError as e:
        raise ConfigMismatch(f"{src}: tensor {e.args[0]} missing from the weights; is the directory complete?") from None
    model = build_model(config)
    check_state_dict(model, sd, where=str(src))
    model.load_state_dict(sd, strict=False)
    return save_model(model, out, tokenizer=_hf_tokenizer(src))


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin loaded with weights_only=True (never arbitrary pickle)."""
    if (src / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(src / "model.safetensors"))
    if (src / "pytorch_model.bin").is_file():
        return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ConfigMismatch(f"{src}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")


def _hf_tokenizer(src: Path):
    if (src / "vocab.json").is_file() and (src / "merges.txt").is_file():
        from pocketgpt.text.bpe import Tokenizer

        return Tokenizer.load(src)
    return None


def export_hf(model_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write our model directory as a directory `transformers` loads with from_pretrained."""
    from safetensors.torch import save_file

    from pocketgpt.model.checkpoint import load_model, unique_state_dict
    from pocketgpt.text import bpe_files

    model, tok = load_model(model_dir)
    c = model.config
    hf_config = config_to_hf(c)  # refuses unsupported configs before writing anything
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state_dict_to_hf(unique_state_dict(model), c), str(tmp), metadata={"format": "pt"})
    if tok is not None:
        bpe_files.write_gpt2(out, tok.ranks, tok.special_tokens, tok.merges)
    for name in ("tokenizer.json", str(c.extra.get("chat_template", ""))):  # an imported vocabulary, template
        if name and (Path(model_dir) / name).is_file():
            atomic_write(out / name, (Path(model_dir) / name).read_bytes())
    atomic_write(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    return out


def hf_twin(model: torch.nn.Module):
    """The same model as a `transformers` GPT2LMHeadModel / LlamaForCausalLM in memory, holding a copy of
    our weights (for benchmarks and tests that race or compare the two implementations)."""
    import transformers

    c = model.config
    check_exportable(c)
    hf_cfg = config_to_hf(c)
    arch = hf_cfg.pop("architectures")[0]
    config_cls = transformers.GPT2Config if c.flavour == "gpt2" else transformers.LlamaConfig
    twin = getattr(transformers, arch)(config_cls(**hf_cfg))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    twin.load_state_dict(state_dict_to_hf(sd, c), strict=False)  # a tied lm_head comes with the embeddings
    twin.tie_weights()
    return twin.train(model.training)
