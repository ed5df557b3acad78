"""GGUF export checked by llama.cpp itself (llama-cpp-python): it loads our file, tokenizes to our
ids and computes our logits; GGUF import of our own export gives our weights back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketgpt.cli import main as cli_main
from pocketgpt.config import ModelConfig, get_preset
from pocketgpt.errors import ConfigMismatch, TokenizerError
from pocketgpt.model.checkpoint import load_model, save_model
from pocketgpt.model.gguf_export import export_gguf, rope_permute
from pocketgpt.model.gguf_import import import_gguf, rope_unpermute
from pocketgpt.model.gpt import GPT
from pocketgpt.text.bpe import Tokenizer

llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

TEXT = "The quick brown fox jumps over the lazy dog. 春眠不觉晓，处处闻啼鸟。夜来风雨声。 " * 20
PROMPTS = ["The lazy fox jumps over the dog.", "春眠不觉晓，处处闻啼鸟<|endoftext|>"]
CONFIGS = {
    "gpt2": ModelConfig(vocab_size=320, block_size=64, n_layer=2, n_head=2, d_model=64),
    "llama": get_preset("tiny-llama").replace(vocab_size=320, block_size=64, n_layer=2, d_model=64, n_head=4,
                                              n_kv_head=2, d_ff=96, head_dim=None, rope_theta=1000.0,
                                              tie_embeddings=False),
}
# max |logit difference| vs llama.cpp (CPU, fp32 KV cache). f32 is not bit-exact: ggml's GELU reads an
# fp16 lookup table. f16/q8_0 add weight rounding; the greedy next token must still agree.
ATOL = {"f32": 1e-3, "f16": 1e-2, "q8_0": 0.1}


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXT, 320, progress=False)


@pytest.fixture(scope="module", params=list(CONFIGS))
def model_dir(request, tmp_path_factory, tok):
    torch.manual_seed(0)
    model = GPT(CONFIGS[request.param]).eval()
    with torch.no_grad():  # move norms/biases off their init so a misplaced tensor shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_model(model, tmp_path_factory.mktemp(request.param) / "model", tokenizer=tok)


@pytest.fixture
def no_weight_repacking(monkeypatch):
    """llama.cpp without its "extra buffer types" (weights repacked for the CPU's AMX / AVX-512
    kernels): on an AMX CPU (Xeon Sapphire Rapids class) llama.cpp 0.3.36's AMX path crashes the
    process on these 64-wide q8_0 matrices. The reference stays llama.cpp's own ggml kernels."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(lib, "llama_model_default_params", params)


@pytest.mark.parametrize("quant", list(ATOL))
def test_llama_cpp_runs_our_export(tmp_path, model_dir, tok, quant, no_weight_repacking):
    export_gguf(model_dir, tmp_path / "m.gguf", quant)
    ours, _ = load_model(model_dir)
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), n_ctx=64, n_threads=2, logits_all=True, verbose=False,
                          type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache: the default f16 cache rounds k/v
    for text in PROMPTS:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert ids == tok.encode(text)
        llm.reset()
        llm.eval(ids)
        theirs = torch.from_numpy(np.array(llm.scores[: len(ids)]))  # (T, V)
        with torch.no_grad():
            mine = ours(torch.tensor([ids]))[0]  # (T, V)
        torch.testing.assert_close(theirs, mine, atol=ATOL[quant], rtol=0)
        assert theirs[-1].argmax() == mine[-1].argmax()


def test_import_of_our_export_is_exact(tmp_path, model_dir, tok):
    export_gguf(model_dir, tmp_path / "m.gguf", "f32")
    import_gguf(tmp_path / "m.gguf", tmp_path / "back")
    a, _ = load_model(model_dir)
    b, tok_b = load_model(tmp_path / "back")
    assert b.config.flavour == a.config.flavour and b.config.tie_embeddings == a.config.tie_embeddings
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    assert isinstance(tok_b, Tokenizer) and all(tok_b.encode(t) == tok.encode(t) for t in PROMPTS + [TEXT])


def test_import_q8_0_close(tmp_path, model_dir):
    export_gguf(model_dir, tmp_path / "m.gguf", "q8_0")
    import_gguf(tmp_path / "m.gguf", tmp_path / "back")
    a, _ = load_model(model_dir)
    b, _ = load_model(tmp_path / "back")
    for name, t in a.state_dict().items():  # Q8_0: 8-bit steps of max|w|/127 per block of 32
        torch.testing.assert_close(b.state_dict()[name], t, atol=float(t.abs().max()) / 127, rtol=0)


def test_rope_permute_is_inverted():
    w = torch.randn(3 * 8, 5)
    torch.testing.assert_close(rope_unpermute(rope_permute(w, 3), 3), w, atol=0, rtol=0)
    assert not torch.equal(rope_permute(w, 3), w)


def test_cli_export_import(tmp_path, model_dir):
    assert cli_main(["export", "gguf", str(model_dir), str(tmp_path / "m.gguf"), "--quant", "f16"]) == 0
    assert cli_main(["import", "gguf", str(tmp_path / "m.gguf"), str(tmp_path / "back"), "--json"]) == 0
    assert (tmp_path / "back" / "config.json").is_file()
    assert cli_main(["import", "gguf", str(tmp_path / "missing.gguf"), str(tmp_path / "b2")]) == 2


def _tiny_gguf(path, arch: str, qtype) -> None:
    """A GGUF file with GPT-2 hyper-parameters, a 2-token vocabulary and one tensor of `qtype`."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, v in [("context_length", 8), ("embedding_length", 256), ("feed_forward_length", 256),
                   ("block_count", 0), ("attention.head_count", 1)]:
        w.add_uint32(f"{arch}.{key}", v)
    w.add_float32(f"{arch}.attention.layer_norm_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b"])
    w.add_token_merges([])
    raw = np.zeros((2, gguf.GGML_QUANT_SIZES[qtype][1] * 256 // gguf.GGML_QUANT_SIZES[qtype][0]), np.uint8)
    w.add_tensor("token_embd.weight", raw, raw_shape=raw.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_arch_and_tensor_type(tmp_path, model_dir):
    _tiny_gguf(tmp_path / "bert.gguf", "bert", gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ConfigMismatch, match="architecture 'bert'"):
        import_gguf(tmp_path / "bert.gguf", tmp_path / "out")
    _tiny_gguf(tmp_path / "k.gguf", "gpt2", gguf.GGMLQuantizationType.Q2_K)
    with pytest.raises(ConfigMismatch, match="token_embd.weight has type Q2_K"):
        import_gguf(tmp_path / "k.gguf", tmp_path / "out")
    with pytest.raises(ConfigMismatch, match="q4_k"):
        export_gguf(model_dir, tmp_path / "x.gguf", "q4_k")
    assert not (tmp_path / "x.gguf").exists()


def test_export_refuses_untokenized_model(tmp_path):
    save_model(GPT(CONFIGS["gpt2"]), tmp_path / "m")
    with pytest.raises(TokenizerError, match="no tokenizer"):
        export_gguf(tmp_path / "m", tmp_path / "m.gguf")


def _blocks_reference(raw: np.ndarray, kind: str) -> np.ndarray:
    """ggml's block formats decoded by hand (ggml-common.h): an fp16 scale d (and min m for Q4_1), then
    32 weights as 4-bit nibbles (low nibbles are weights 0..15, high nibbles 16..31) or int8."""
    block_bytes, head = {"Q4_0": (18, 2), "Q4_1": (20, 4), "Q8_0": (34, 2)}[kind]
    blocks = raw.reshape(raw.shape[0], -1, block_bytes)  # (rows, nblocks, bytes per block)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)  # (rows, nblocks, 1)
    if kind == "Q8_0":
        return (blocks[..., 2:].copy().view(np.int8) * d).reshape(raw.shape[0], -1)
    qs = blocks[..., head:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)  # (rows, nblocks, 32)
    w = (q - 8) * d if kind == "Q4_0" else q * d + blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    return w.reshape(raw.shape[0], -1)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0", "F16"])
def test_dequantize_matches_block_formula(tmp_path, kind):
    from gguf import GGUFReader

    from pocketgpt.model.gguf_import import dequantize

    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "gpt2")
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    if kind == "F16":
        w.add_tensor("t", x.astype(np.float16))
    else:
        q = gguf.quants.quantize(x, qtype)
        w.add_tensor("t", q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = GGUFReader(str(tmp_path / "t.gguf")).tensors[0]
    got = dequantize(t)
    assert got.shape == (3, 64) and got.dtype == torch.float32
    want = x.astype(np.float16).astype(np.float32) if kind == "F16" else _blocks_reference(np.asarray(t.data), kind)
    np.testing.assert_array_equal(got.numpy(), want)
    assert np.abs(got.numpy() - x).max() < {"Q4_0": 0.5, "Q4_1": 0.5, "Q8_0": 0.05, "F16": 1e-3}[kind]
