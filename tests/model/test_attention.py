"""Attention, positions and blocks, each against an independent reference (the formula written out
with plain tensor ops, the 2017 paper's sinusoid formula, torch's own LayerNorm)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pocketgpt.model.attention as attention_mod
from pocketgpt.config import ModelConfig
from pocketgpt.model.attention import (
    PRODUCTS_MAX_T,
    CrossAttention,
    KVCache,
    SelfAttention,
    _products_win,
    causal_mask,
    naive_attention,
    padding_mask,
    sdpa_attention,
)
from pocketgpt.model.blocks import Block, FeedForward, LayerNorm, RMSNorm, RoPE, sinusoidal_table

CFG = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, d_model=32, dropout=0.0)


def _qkv(B=2, nh=3, Tq=5, Tk=5, hs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda T: torch.randn(B, nh, T, hs, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return mk(Tq), mk(Tk), mk(Tk)


def test_naive_matches_loop_formula():
    """Per query, per head: softmax over allowed keys of q.k/sqrt(d), written with Python loops."""
    q, k, v = _qkv(B=1, nh=2, Tq=4, Tk=4, hs=3)
    out, w = naive_attention(q, k, v, causal=True)
    for h in range(2):
        for i in range(4):
            s = torch.stack([q[0, h, i] @ k[0, h, j] / math.sqrt(3) for j in range(i + 1)])
            p = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            assert torch.allclose(w[0, h, i, : i + 1], p)
            assert torch.all(w[0, h, i, i + 1:] == 0)
            assert torch.allclose(out[0, h, i], (p[:, None] * v[0, h, : i + 1]).sum(0))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Tq,Tk", [(5, 5), (1, 6), (3, 7)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_sdpa_equals_reference_forward_and_grad(causal, Tq, Tk, with_mask):
    q, k, v = _qkv(Tq=Tq, Tk=Tk)
    mask = None
    if with_mask:  # second row: first two keys are padding
        keep = torch.ones(2, Tk)
        keep[1, :2] = 0
        mask = padding_mask(keep)
    ref, _ = naive_attention(q, k, v, causal=causal, mask=mask)
    fast = sdpa_attention(q, k, v, causal=causal, mask=mask)
    assert torch.allclose(ref, fast, atol=1e-6)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    grads_fast = torch.autograd.grad(fast, (q, k, v), g)
    for a, b in zip(grads_ref, grads_fast, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_causal_mask_is_bottom_right_aligned():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(B=1, Tq=3, Tk=3)
    mask = padding_mask(torch.tensor([[0.0, 1.0, 1.0]]))  # query 0 (a pad) can see nothing causally
    for out in (naive_attention(q, k, v, causal=True, mask=mask)[0], sdpa_attention(q, k, v, causal=True, mask=mask)):
        assert torch.isfinite(out).all() and torch.all(out[:, :, 0] == 0)


def test_zero_one_multiplied_mask_leaks_but_minus_inf_does_not():
    """The reason masks go in as -inf: multiplying scores by 0 leaves exp(0) = 1 weight on the future."""
    q, k, v = _qkv(B=1, nh=1, Tq=3, Tk=3)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    wrong = torch.softmax(scores * causal_mask(3, 3).double(), dim=-1)
    _, right = naive_attention(q, k, v, causal=True)
    assert wrong[0, 0, 0, 1] > 0 and right[0, 0, 0, 1] == 0


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa = SelfAttention(ModelConfig(**CFG, n_kv_head=2, bias=False)).double()
    mha = SelfAttention(ModelConfig(**CFG, bias=False)).double()
    hs, nh = 8, 4
    wq, wk, wv = gqa.qkv.weight.split([nh * hs, 2 * hs, 2 * hs])
    rep = lambda w: w.view(2, hs, -1).repeat_interleave(2, dim=0).reshape(nh * hs, -1)  # noqa: E731
    with torch.no_grad():  # kv head j serves query heads 2j and 2j+1
        mha.qkv.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.proj.weight.copy_(gqa.proj.weight)
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    assert torch.allclose(gqa(x), mha(x), atol=1e-10)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_self_attention_kv_cache_equals_full(positions):
    torch.manual_seed(0)
    cfg = ModelConfig(**CFG, n_kv_head=2, positions=positions)
    attn = SelfAttention(cfg).double().eval()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    full = attn(x)
    cache = KVCache(1, 2, 2, 16, 8, dtype=torch.float64)
    steps = []
    for a, b in [(0, 4), (4, 5), (5, 7)]:  # a prefill chunk, then one token, then two
        steps.append(attn(x[:, a:b], cache=cache))
        cache.advance(b - a)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10)
    assert cache.k.data_ptr() == cache.k[0].data_ptr()  # one buffer, never reallocated


def test_kv_cache_overflow_is_an_error():
    cache = KVCache(1, 1, 1, 2, 4)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(0, torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4))


def test_need_weights_returns_rows_summing_to_one():
    attn = SelfAttention(ModelConfig(**CFG)).eval()
    x = torch.randn(1, 5, 32)
    y = attn(x, need_weights=True)
    assert torch.allclose(y, attn(x), atol=1e-5)
    w = attn.last_weights
    assert w.shape == (1, 4, 5, 5) and torch.allclose(w.sum(-1), torch.ones(1, 4, 5))
    assert torch.all(w.triu(1) == 0)


def test_cross_attention_reads_memory_and_respects_its_padding():
    torch.manual_seed(0)
    ca = CrossAttention(ModelConfig(**CFG)).double().eval()
    x, mem = torch.randn(2, 3, 32, dtype=torch.float64), torch.randn(2, 5, 32, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = ca(x, mem, memory_mask=keep)
    # row 1 with its padded memory positions removed must give the same result
    alone = ca(x[1:], mem[1:, :3])
    assert torch.allclose(out[1:], alone, atol=1e-10)
    ref = ca(x, mem, memory_mask=keep, need_weights=True)
    assert torch.allclose(out, ref, atol=1e-10) and torch.all(ca.last_weights[1, :, :, 3:] == 0)
    # hand-written: q from x, k/v from memory, no mask
    hs = 8
    q = (x @ ca.q.weight.T + ca.q.bias).view(2, 3, 4, hs).transpose(1, 2)
    k, v = (mem @ ca.kv.weight.T + ca.kv.bias).split(32, -1)
    k, v = (t.view(2, 5, 4, hs).transpose(1, 2) for t in (k, v))
    y = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hs), -1) @ v
    y = y.transpose(1, 2).reshape(2, 3, 32) @ ca.proj.weight.T + ca.proj.bias
    assert torch.allclose(ca(x, mem), y, atol=1e-10)


# -- positions -----------------------------------------------------------------------------------
def test_sinusoidal_table_matches_paper_formula():
    d = 10
    table = sinusoidal_table(50, d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / d)), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / d)), abs=1e-6)


def test_rope_scores_depend_only_on_offset():
    rope = RoPE(8, theta=10000.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 8, generator=g, dtype=torch.float64)
    score = lambda m, n: (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()  # noqa: E731
    for m, n in [(0, 3), (10, 13), (100, 103)]:
        assert score(m, n).item() == pytest.approx(score(0, 3).item(), abs=1e-9)
    assert abs(score(0, 3).item() - score(0, 5).item()) > 1e-6  # and it does depend on the offset
    assert torch.allclose(rope(q, torch.tensor([0])), q)  # position 0 is the identity
    assert torch.allclose(rope(q, torch.tensor([5])).norm(), q.norm())  # a rotation keeps length


# -- norms, FFN, blocks --------------------------------------------------------------------------
def test_norms_against_references():
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    ln = LayerNorm(16, 1e-5).double()
    with torch.no_grad():
        ln.weight.uniform_()
        ln.bias.uniform_()
    assert torch.allclose(ln(x), F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5))
    rms = RMSNorm(16, 1e-6).double()
    manual = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6)
    assert torch.allclose(rms(x), manual)


@pytest.mark.parametrize("act,fn", [("relu", F.relu), ("gelu", F.gelu), ("gelu_tanh", None), ("swiglu", None)])
def test_feed_forward_formulas(act, fn):
    torch.manual_seed(0)
    ff = FeedForward(ModelConfig(**CFG, activation=act)).double()
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    up = x @ ff.fc.weight.T + ff.fc.bias
    if act == "gelu_tanh":  # GPT-2's formula written out
        h = 0.5 * up * (1 + torch.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up**3)))
    elif act == "swiglu":
        gate = x @ ff.gate.weight.T + ff.gate.bias
        h = gate * torch.sigmoid(gate) * up
    else:
        h = fn(up)
    assert torch.allclose(ff(x), h @ ff.proj.weight.T + ff.proj.bias)


def test_pre_ln_and_post_ln_structure():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 32)
    pre = Block(ModelConfig(**CFG, norm_placement="pre")).eval()
    h = x + pre.attn(pre.ln1(x))  # norm inside the residual branch
    assert torch.allclose(pre(x), h + pre.mlp(pre.ln2(h)), atol=1e-6)
    post = Block(ModelConfig(**CFG, norm_placement="post")).eval()
    h = post.ln1(x + post.attn(x))  # norm after the residual sum
    assert torch.allclose(post(x), post.ln2(h + post.mlp(h)), atol=1e-6)
    out = post(x * 100)
    # post-LN output is normalised (mean 0, std 1 per token before the affine, which is identity at init)
    assert torch.allclose(out.mean(-1), torch.zeros(1, 4), atol=1e-5)
    assert pre(x * 100).std() > 10  # pre-LN keeps the residual stream's scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_cpu_causal_attention_by_products_matches_the_reference(dtype, monkeypatch):
    q, k, v = _qkv(B=2, Tq=9, Tk=9)
    assert not _products_win(q)  # fp32 keeps the fused kernel
    long = torch.zeros(1, 1, PRODUCTS_MAX_T + 1, 8, dtype=dtype)
    assert not _products_win(long)  # past the length where writing the scores out pays
    ref, _ = naive_attention(q, k, v, causal=True)
    qh, kh, vh = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    monkeypatch.setattr(attention_mod, "_products_win", lambda q: True)  # whatever this CPU measured
    half = sdpa_attention(qh, kh, vh, causal=True)  # takes _causal_by_products
    assert half.dtype == dtype
    torch.testing.assert_close(half.to(ref.dtype), ref, atol=2e-2, rtol=2e-2)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (q, k, v), g)
    grads_half = torch.autograd.grad(half, (qh, kh, vh), g.to(dtype))
    for a, b in zip(grads_ref, grads_half, strict=True):
        torch.testing.assert_close(b.to(a.dtype), a, atol=5e-2, rtol=5e-2)


def test_products_path_on_head_views_of_one_qkv_buffer_at_two_lengths():
    """As the model calls it: q, k, v are transposed views of one (B, T, 3, nh, hs) product output
    (not contiguous), at two lengths in turn (each its own cached mask bias); values and gradients
    against the float64 reference."""
    g = torch.Generator().manual_seed(5)
    for t in (33, 17):
        qkv = torch.randn(2, t, 3, 4, 16, generator=g, dtype=torch.float64)
        ref_in = [qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(3)]  # (B, nh, T, hs) views
        ref, _ = naive_attention(*ref_in, causal=True)
        half = qkv.to(torch.bfloat16).requires_grad_()
        out = attention_mod._causal_by_products(*(half[:, :, i].transpose(1, 2) for i in range(3)), 0.0)
        assert out.shape == ref.shape and out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
        up = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        want = torch.stack(torch.autograd.grad(ref, ref_in, up), dim=2).transpose(1, 3)  # (B, T, 3, nh, hs)
        (got,) = torch.autograd.grad(out, half, up.to(torch.bfloat16))
        torch.testing.assert_close(got.double(), want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize(
    "products,fused,length,want",
    [(1.0, 3.0, 256, True), (3.0, 1.0, 64, False), (1.0, 1.1, 128, True), (1.1, 1.0, 256, True),
     (1.2, 1.0, 256, False)],
)
def test_the_products_path_is_chosen_by_measurement_with_a_margin(monkeypatch, products, fused, length, want):
    """The fused kernel must be more than PRODUCTS_MARGIN faster to be chosen; a near tie keeps the
    products."""
    import pocketgpt.measure as measure

    monkeypatch.setattr(measure, "timings", lambda candidates, rounds=3, repeat=1: {"products": products, "fused": fused})
    monkeypatch.setattr(attention_mod, "_PRODUCTS_CHOICE", {})
    q = torch.zeros(1, 1, length, 8, dtype=torch.bfloat16)
    assert _products_win(q) is want
    assert list(attention_mod._PRODUCTS_CHOICE.values()) == [want]  # measured once, then remembered


def test_a_real_measurement_picks_one_and_remembers_it(monkeypatch):
    monkeypatch.setattr(attention_mod, "_PRODUCTS_CHOICE", {})
    q = torch.zeros(2, 2, 16, 8, dtype=torch.bfloat16)
    first = _products_win(q)
    assert first in (True, False) and len(attention_mod._PRODUCTS_CHOICE) == 1
    assert _products_win(q) is first
    with torch.no_grad():  # forward only: measured apart
        _products_win(q)
    assert len(attention_mod._PRODUCTS_CHOICE) == 2


def test_products_path_dropout_drops_weights_and_keeps_the_expectation():
    """Dropout on the written-out weights: some outputs change with the seed, none are NaN, and the
    mean over many draws approaches the no-dropout output (dropout rescales by 1/(1-p))."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    plain = attention_mod._causal_by_products(q, k, v, 0.0).float()
    torch.manual_seed(0)
    draws = torch.stack([attention_mod._causal_by_products(q, k, v, 0.3).float() for _ in range(400)])
    assert torch.isfinite(draws).all()
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), plain, atol=0.1, rtol=0.1)
