"""The model directory: round trip, strict loading with clear errors, `model info` and `generate` CLIs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pocketgpt.config import ModelConfig, get_preset
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.checkpoint import load_model, save_model
from pocketgpt.model.gpt import GPT
from pocketgpt.model.info import kv_cache_bytes, model_info, param_counts

GPT2 = ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, d_model=16)
LLAMA = GPT2.replace(positions="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False,
                     n_kv_head=1, d_ff=40)


def _tokenizer():
    from pocketgpt.text.bpe import Tokenizer

    text = "It is a truth universally acknowledged. 床前明月光，疑是地上霜。 " * 20
    return Tokenizer.train(text, 300, progress=False)


@pytest.mark.parametrize("config", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_round_trip_same_logits_and_config(tmp_path, config):
    torch.manual_seed(0)
    model = GPT(config).eval()
    save_model(model, tmp_path / "m")
    loaded, tok = load_model(tmp_path / "m")
    assert tok is None and loaded.config == config
    idx = torch.randint(0, 300, (2, 7))
    assert torch.equal(loaded(idx), model(idx))
    names = set(load_file(tmp_path / "m" / "model.safetensors"))
    assert ("lm_head.weight" in names) == (not config.tie_embeddings)  # a tied matrix is saved once
    if config.tie_embeddings:
        assert loaded.lm_head.weight.data_ptr() == loaded.tok_emb.weight.data_ptr()
    assert not list((tmp_path / "m").glob(".*tmp"))  # no temporary files left behind


def test_round_trip_with_tokenizer(tmp_path):
    tok = _tokenizer()
    save_model(GPT(GPT2), tmp_path / "m", tokenizer=tok)
    _, tok2 = load_model(tmp_path / "m")
    text = "疑是地上霜 truth"
    assert tok2.encode(text) == tok.encode(text) and tok2.decode(tok.encode(text)) == text


def test_truncated_and_corrupt_weights_raise_config_mismatch(tmp_path):
    save_model(GPT(GPT2), tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigMismatch, match="corrupt or truncated"):
        load_model(tmp_path / "m")
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ConfigMismatch, match="model.safetensors"):
        load_model(tmp_path / "m")


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    save_model(GPT(GPT2), tmp_path / "m")
    cfg = GPT2.replace(d_ff=32)  # the config now promises a narrower FFN than the weights hold
    (tmp_path / "m" / "config.json").write_text(cfg.to_json())
    with pytest.raises(ConfigMismatch, match=r"blocks\.0\.mlp\.fc\.bias has shape \(64,\), config expects \(32,\)"):
        load_model(tmp_path / "m")


def test_missing_and_unexpected_tensors(tmp_path):
    save_model(GPT(GPT2), tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    tensors = load_file(path)
    del tensors["ln_f.bias"]
    save_file(tensors, path)
    with pytest.raises(ConfigMismatch, match=r"ln_f\.bias missing"):
        load_model(tmp_path / "m")
    tensors["ln_f.bias"] = torch.zeros(16)
    tensors["extra.weight"] = torch.zeros(3)
    save_file(tensors, path)
    with pytest.raises(ConfigMismatch, match=r"unexpected tensor extra\.weight"):
        load_model(tmp_path / "m")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ConfigMismatch, match="no config.json"):
        load_model(tmp_path)


# -- model info ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "gpt2-124m"])
def test_param_counts_match_the_built_model(preset):
    config = get_preset(preset)
    counts = param_counts(config)
    with torch.device("meta"):
        model = GPT(config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embeddings"] == model.tok_emb.weight.numel() + (
        model.pos_emb.weight.numel() if config.positions == "learned" else 0)
    if preset == "gpt2-124m":
        assert counts["total"] == 124_439_808  # GPT-2 small's published size with tied head


def test_flops_and_kv_cache_arithmetic():
    config = get_preset("tiny")  # 4 layers, d_model 128, 4 heads, MHA
    info = model_info(config, context=100)
    n = info["params"]
    active = n["attention"] + n["ffn"] + 4096 * 128
    assert info["flops_per_token"]["forward"] == 2 * active + 4 * 4 * 100 * 128
    assert info["flops_per_token"]["training"] == 3 * info["flops_per_token"]["forward"]
    assert kv_cache_bytes(config, 100, 2) == 2 * 4 * 4 * 32 * 100 * 2
    assert info["weights_bytes"]["fp32"] == 4 * n["total"]


def test_cli_model_info_json(cli):
    out = json.loads(cli("model", "info", "tiny", "--context", "64", "--json").stdout)
    assert out["params"]["total"] == param_counts(get_preset("tiny"))["total"] and out["context"] == 64
    human = cli("model", "info", "gpt2-124m").stdout
    assert "124,439,808" in human
    bad = cli("model", "info", "no-such-preset", check=False)
    assert bad.returncode == 2 and "preset" in bad.stderr


def test_cli_generate_on_fresh_tiny_model(cli, tmp_path):
    torch.manual_seed(0)
    tok = _tokenizer()
    save_model(GPT(GPT2.replace(vocab_size=tok.vocab_size)), tmp_path / "m", tokenizer=tok)
    args = ("generate", str(tmp_path / "m"), "床前明月光", "--max-tokens", "8", "--temperature", "0.9", "--seed", "3")
    a = json.loads(cli(*args, "--json").stdout)
    b = json.loads(cli(*args, "--json").stdout)
    assert a == b and a["prompt_tokens"] == len(tok.encode("床前明月光"))
    assert len(a["tokens"]) <= 8 and a["text"] == tok.decode(a["tokens"])
    greedy = cli("generate", str(tmp_path / "m"), "It is", "--max-tokens", "4", "--temperature", "0")
    assert greedy.stdout.startswith("It is")
    bad = cli("generate", str(tmp_path / "m"), "x", "--top-p", "1.5", check=False)
    assert bad.returncode == 2 and "--top-p" in bad.stderr
    info = json.loads(cli("model", "info", str(tmp_path / "m"), "--json").stdout)
    assert info["params"]["total"] == GPT(GPT2.replace(vocab_size=tok.vocab_size)).num_params()
