"""GPT, both flavours: the forward contract, causality, padding, the KV cache, tying, and logits
against `transformers` (GPT2LMHeadModel, LlamaForCausalLM) as the independent reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.gpt import GPT

BASE = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, d_model=32)
FLAVOURS = {
    "gpt2": ModelConfig(**BASE),
    "llama": ModelConfig(**BASE, n_kv_head=2, d_ff=48, positions="rope", norm="rmsnorm", activation="swiglu",
                         bias=False, tie_embeddings=False),
    "post-ln-sinusoidal": ModelConfig(**BASE, norm_placement="post", positions="sinusoidal", activation="relu"),
}


def _model(name: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(FLAVOURS[name]).double().eval()


def _ids(B=2, T=10, seed=1):
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_forward_contract_shapes(name):
    m = _model(name)
    idx = _ids()
    assert m(idx).shape == (2, 10, 64)
    assert m.hidden(idx).shape == (2, 10, 32)
    loss = m(idx, idx)
    assert loss.dim() == 0 and math.isfinite(loss.item())


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_causality_future_tokens_never_change_the_past(name):
    m = _model(name)
    idx = _ids(B=1, T=12)
    base = m(idx)
    for t in (0, 5, 10):
        changed = idx.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % 64
        out = m(changed)
        assert torch.allclose(out[0, : t + 1], base[0, : t + 1], atol=1e-12)
        assert not torch.allclose(out[0, t + 1:], base[0, t + 1:])  # the test can see a change


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_left_padded_batch_matches_unpadded(name):
    m = _model(name)
    short, long_ = _ids(B=1, T=5, seed=2), _ids(B=1, T=8, seed=3)
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([torch.cat([pad, short], 1), long_])  # (2, 8), row 0 left-padded
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0
    out = m(batch, attention_mask=mask)
    assert torch.allclose(out[0, 3:], m(short)[0], atol=1e-10)
    assert torch.allclose(out[1], m(long_)[0], atol=1e-10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_kv_cache_decoding_equals_full_recomputation(name):
    m = _model(name)
    idx = _ids(B=2, T=9)
    full = m(idx)
    cache = m.new_cache(2, max_len=16)
    parts = [m(idx[:, :5], cache=cache)]  # prefill
    for t in range(5, 9):  # then one token at a time
        parts.append(m(idx[:, t:t + 1], cache=cache))
    assert cache.pos == 9
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_kv_cache_with_padding_mask_equals_full():
    m = _model("llama")
    idx = _ids(B=2, T=7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    full = m(idx, attention_mask=mask)
    cache = m.new_cache(2, max_len=8)
    a = m(idx[:, :4], cache=cache, attention_mask=mask[:, :4])
    b = m(idx[:, 4:], cache=cache, attention_mask=mask)
    assert torch.allclose(torch.cat([a, b], 1)[:, :], full, atol=1e-10)


def test_weight_tying_shares_storage_and_untied_does_not():
    tied, untied = _model("gpt2"), _model("llama")
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    n_unique = sum(p.numel() for p in tied.parameters())
    assert n_unique == tied.num_params() and "lm_head.weight" in tied.state_dict()


def test_loss_ignores_minus_one_targets():
    m = _model("gpt2")
    idx = _ids(B=2, T=6)
    targets = idx.roll(-1, 1).clone()
    targets[:, :3] = -1
    logits = m(idx)
    want = F.cross_entropy(logits[:, 3:].reshape(-1, 64), targets[:, 3:].reshape(-1))
    assert torch.allclose(m(idx, targets), want)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=256, block_size=16, n_layer=8, n_head=4, d_model=128))
    assert m.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(m.blocks[0].attn.qkv.bias == 0)


def test_return_attention_gives_causal_weights_per_layer():
    m = _model("gpt2")
    logits, weights = m(_ids(B=1, T=6), return_attention=True)
    assert torch.allclose(logits, m(_ids(B=1, T=6)), atol=1e-10)
    assert len(weights) == 2 and weights[0].shape == (1, 4, 6, 6)
    assert torch.all(weights[1].triu(1) == 0)


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ConfigMismatch, match="block_size 32"):
        _model("gpt2")(torch.zeros(1, 33, dtype=torch.long))


# -- against transformers ------------------------------------------------------------------------
def test_gpt2_flavour_matches_transformers_gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                  activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  layer_norm_epsilon=1e-5)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).double().eval()
    ours = GPT(FLAVOURS["gpt2"]).double().eval()
    hs = hf.state_dict()
    sd = {"tok_emb.weight": hs["transformer.wte.weight"], "pos_emb.weight": hs["transformer.wpe.weight"],
          "ln_f.weight": hs["transformer.ln_f.weight"], "ln_f.bias": hs["transformer.ln_f.bias"],
          "lm_head.weight": hs["lm_head.weight"]}
    names = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(2):
        for ours_name, hf_name in names.items():
            w, b = hs[f"transformer.h.{i}.{hf_name}.weight"], hs[f"transformer.h.{i}.{hf_name}.bias"]
            sd[f"blocks.{i}.{ours_name}.weight"] = w if ours_name.startswith("ln") else w.T  # Conv1D is (in, out)
            sd[f"blocks.{i}.{ours_name}.bias"] = b
    ours.load_state_dict(sd, strict=True)
    idx = _ids(B=2, T=12)
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-5)


def test_llama_flavour_matches_transformers_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).double().eval()
    ours = GPT(FLAVOURS["llama"]).double().eval()
    hs = hf.state_dict()
    sd = {"tok_emb.weight": hs["model.embed_tokens.weight"], "ln_f.weight": hs["model.norm.weight"],
          "lm_head.weight": hs["lm_head.weight"]}
    for i in range(2):
        p = f"model.layers.{i}."
        sd[f"blocks.{i}.ln1.weight"] = hs[p + "input_layernorm.weight"]
        sd[f"blocks.{i}.ln2.weight"] = hs[p + "post_attention_layernorm.weight"]
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.cat([hs[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        sd[f"blocks.{i}.attn.proj.weight"] = hs[p + "self_attn.o_proj.weight"]
        sd[f"blocks.{i}.mlp.gate.weight"] = hs[p + "mlp.gate_proj.weight"]
        sd[f"blocks.{i}.mlp.fc.weight"] = hs[p + "mlp.up_proj.weight"]
        sd[f"blocks.{i}.mlp.proj.weight"] = hs[p + "mlp.down_proj.weight"]
    ours.load_state_dict(sd, strict=True)
    idx = _ids(B=2, T=12)
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-5)


def test_gelu_tanh_by_sigmoid_is_gpt2s_gelu():
    """The form torch.compile runs (x * sigmoid(2c(x + 0.044715 x^3))) is the same function as
    torch's tanh GELU: values and gradients, fp64 to rounding, fp32 and bf16 to a unit in the last place."""
    from pocketgpt.model.blocks import gelu_tanh, gelu_tanh_by_sigmoid

    x = torch.linspace(-12, 12, 2001, dtype=torch.float64, requires_grad=True)
    want = F.gelu(x, approximate="tanh")
    got = gelu_tanh_by_sigmoid(x)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_got, g_want, atol=1e-12, rtol=1e-12)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        xs = x.detach().to(dtype)
        torch.testing.assert_close(gelu_tanh_by_sigmoid(xs), F.gelu(xs, approximate="tanh"), atol=tol, rtol=tol)
    assert torch.equal(gelu_tanh(x.detach()), F.gelu(x.detach(), approximate="tanh"))  # eager: torch's kernel


@pytest.mark.slow
def test_compiled_training_steps_match_eager():
    """torch.compile (inductor, the C++ backend on CPU) of the GPT: the same loss and gradients as
    eager over two SGD steps (AdamW's first step would blow rounding noise in a zero gradient, the key
    bias's, up to +-lr); the compiled graph takes the sigmoid GELU and the plain loss."""
    torch.manual_seed(0)
    eager = GPT(ModelConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, d_model=32, dropout=0.0))
    twin = GPT(eager.config)
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin)
    g = torch.Generator().manual_seed(3)
    idx, targets = (torch.randint(0, 61, (3, 16), generator=g) for _ in range(2))
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, twin)]
    for _ in range(2):
        losses = []
        for fwd, opt in zip((eager, compiled), opts, strict=True):
            opt.zero_grad()
            loss = fwd(idx, targets)
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], abs=1e-5)
        for (name, a), b in zip(eager.named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-4, msg=name)
        for opt in opts:
            opt.step()
