"""Hugging Face interop against transformers itself: our exports load in GPT2LMHeadModel /
LlamaForCausalLM with the same logits, and directories transformers writes import to the same logits."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.config import ModelConfig, get_preset
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.checkpoint import load_model, save_model
from pocketgpt.model.gpt import GPT
from pocketgpt.model.hf import export_hf, import_hf
from pocketgpt.text.bpe import Tokenizer

transformers = pytest.importorskip("transformers")

TEXT = "The quick brown fox jumps over the lazy dog. 春眠不觉晓，处处闻啼鸟。 " * 20
GPT2_TINY = ModelConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, d_model=32)
LLAMA_TINY = get_preset("tiny-llama").replace(vocab_size=300, block_size=32, n_layer=2, d_model=32, n_head=4,
                                               n_kv_head=2, d_ff=48, head_dim=None, rope_theta=500.0)


def _model(config: ModelConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():  # random norms/biases too, so a swapped or untransposed tensor shows
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXT, 300, progress=False)


@pytest.mark.parametrize("config", [GPT2_TINY, LLAMA_TINY], ids=["gpt2", "llama"])
def test_export_hf_logits_match_transformers(tmp_path, tok, config):
    ours = _model(config)
    save_model(ours, tmp_path / "ours", tokenizer=tok)
    export_hf(tmp_path / "ours", tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == ("GPT2LMHeadModel" if config.flavour == "gpt2" else "LlamaForCausalLM")
    idx = torch.tensor([tok.encode("The fox 处处闻啼鸟 jumps")])
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-4, rtol=0)


def test_export_hf_tokenizer_loads_in_transformers(tmp_path, tok):
    save_model(_model(GPT2_TINY), tmp_path / "ours", tokenizer=tok)
    export_hf(tmp_path / "ours", tmp_path / "hf")
    hf_tok = transformers.GPT2Tokenizer(str(tmp_path / "hf" / "vocab.json"), str(tmp_path / "hf" / "merges.txt"))
    for text in ["The lazy dog.", "处处闻啼鸟", "foxes  jump\n"]:
        assert hf_tok.encode(text) == tok.encode(text)


@pytest.mark.parametrize("config", [GPT2_TINY, LLAMA_TINY], ids=["gpt2", "llama"])
def test_hf_round_trip_identical_tensors(tmp_path, tok, config):
    save_model(_model(config, seed=1), tmp_path / "a", tokenizer=tok)
    export_hf(tmp_path / "a", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "b")
    a, tok_a = load_model(tmp_path / "a")
    b, tok_b = load_model(tmp_path / "b")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    assert tok_b.encode(TEXT) == tok_a.encode(TEXT)


def test_import_transformers_gpt2_directory(tmp_path):
    hf_config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    idx = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), theirs(idx).logits, atol=1e-4, rtol=0)


def test_import_pytorch_bin_weights_only(tmp_path):
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=16, n_embd=32,
                                                                  n_layer=1, n_head=2))
    (tmp_path / "hf").mkdir()
    theirs.config.to_json_file(tmp_path / "hf" / "config.json")
    torch.save(theirs.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    ours, _ = load_model(tmp_path / "ours")
    torch.testing.assert_close(ours.blocks[0].attn.qkv.weight, theirs.transformer.h[0].attn.c_attn.weight.t())


def test_refuses_unsupported(tmp_path, tok):
    save_model(_model(get_preset("tiny-moe").replace(vocab_size=300, block_size=16, n_layer=1, d_model=32)),
               tmp_path / "moe")
    with pytest.raises(ConfigMismatch, match="mixture-of-experts"):
        export_hf(tmp_path / "moe", tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigMismatch, match="model_type 'bert'"):
        import_hf(tmp_path / "bert", tmp_path / "out2")


def test_cli_export_import_hf(tmp_path, tok, capsys):
    import json

    from pocketgpt.cli import main

    save_model(_model(GPT2_TINY), tmp_path / "ours", tokenizer=tok)
    assert main(["export", "hf", str(tmp_path / "ours"), str(tmp_path / "hf"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(report["files"])
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert main(["import", "hf", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err
