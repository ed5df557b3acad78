"""The decode fast path against the reference: `FastDecoder.step` == the model's own full forward
(no cache at all) for every flavour, uniform and ragged batches, transposed-copy, plain and blocked
products; the engine gives the same tokens with and without it; stale weights are re-read; unknown
parts fall back."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.infer import fast_decode
from pocketgpt.infer.engine import Engine
from pocketgpt.infer.fast_decode import FastDecoder, _linear, unsupported
from pocketgpt.infer.sampling import SamplingParams
from tests.infer.helpers import LLAMA, tiny_gpt

FLAVOURS = {
    "gpt2": {},
    "llama-gqa": {**LLAMA, "n_head": 4, "n_kv_head": 2},
    "llama-mqa": LLAMA,
    "post-ln-sinusoidal-relu": dict(norm_placement="post", positions="sinusoidal", activation="relu"),
    "no-positions-untied-gelu": dict(positions="none", tie_embeddings=False, activation="gelu"),
}


def _decode_logits(m, seqs, starts, steps, layout):
    """Prefill each row's prefix through the model, then `steps` fast steps; logits per row (steps, V)."""
    fast = FastDecoder(m, **layout)
    cache = m.new_cache(len(seqs) + 1, 24, ragged=True)
    with torch.no_grad():
        for i, (s, a) in enumerate(zip(seqs, starts, strict=True)):
            m(torch.tensor([s[:a]]), cache=cache.row(i))
            cache.set_length(i, a)
    cache.n = len(seqs)
    got = [[] for _ in seqs]
    for step in range(steps):
        ids = torch.tensor([s[a + step] for s, a in zip(seqs, starts, strict=True)])  # (n,)
        for i, row in enumerate(fast.step(ids, cache)):
            got[i].append(row)
    return [torch.stack(g) for g in got]


LAYOUTS = {  # which product each weight takes: transposed copies (the default for tiny models), plain, blocked
    "transposed": {},
    "plain": {"copy_max": 0},
    "blocked": {"chunk_min": 1, "copy_max": 0},
    "blocked-packed": {"chunk_min": 1, "copy_max": 0, "pack_rows": 3},
}


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("starts", [[3, 7, 1], [5, 5, 5], [6]], ids=["ragged", "uniform", "single"])
@pytest.mark.parametrize("flavour", FLAVOURS.values(), ids=FLAVOURS.keys())
def test_fast_step_equals_full_recomputation(flavour, starts, layout):
    m = tiny_gpt(**flavour)
    seqs = [
        [int(t) for t in torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(n))]
        for n in (14, 17, 11)
    ][: len(starts)]
    got = _decode_logits(m, seqs, starts, 6, layout)
    with torch.no_grad():
        for s, a, g in zip(seqs, starts, got, strict=True):
            full = m(torch.tensor([s[: a + 6]]))[0, a : a + 6]  # (6, V) without any cache
            torch.testing.assert_close(g, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("onednn", ["packed", "plain", None], ids=["onednn-packed", "onednn", "inner-blocks"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "shape", [(96, 40), (97, 40), (64, 41), (97, 41)], ids=["blocks", "prime-out", "odd-in", "neither"]
)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_blocked_products_equal_linear(shape, bias, n, onednn, monkeypatch):
    if onednn is None:
        monkeypatch.setattr(fast_decode, "_onednn_linear", None)
    torch.manual_seed(0)
    w = torch.randn(shape)
    b = torch.randn(shape[0]) if bias else None
    x = torch.randn(n, shape[1])
    product = _linear(w, b, chunk_min=1, pack_rows=8 if onednn == "packed" else 0)
    torch.testing.assert_close(product(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_packed_copy_is_made_only_when_asked_and_only_for_several_rows():
    if fast_decode._onednn_pack is None:
        pytest.skip("this torch build has no oneDNN weight packing")
    w = torch.randn(96, 40)
    plain, packed = _linear(w, None, chunk_min=1), _linear(w, None, chunk_min=1, pack_rows=8)
    assert plain.w_many is plain.w and packed.w_many is not packed.w  # the copy costs memory: only on request
    assert packed.w_many.is_mkldnn
    assert fast_decode._copies_of(plain) == [] and fast_decode._copies_of(packed)[0] is packed.w_many
    x = torch.randn(1, 40)  # one row reads the model's own weight (blocked), never the copy
    w.mul_(2.0)
    torch.testing.assert_close(packed(x), F.linear(x, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_transposed_copy_product_equals_linear_and_follows_no_later_edit(bias, n):
    torch.manual_seed(0)
    w, b = torch.randn(97, 41), (torch.randn(97) if bias else None)
    x = torch.randn(n, 41)
    product = _linear(w, b, chunk_min=1, transpose=True)  # the copy wins over blocks
    torch.testing.assert_close(product(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    expected = product(x)
    w.mul_(2.0)  # a copy: the decoder must be rebuilt (FastDecoder.stale) to see this
    torch.testing.assert_close(product(x), expected)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_small_models_large_weight_has_a_packed_copy_for_several_rows(n):
    torch.manual_seed(0)
    w, x = torch.randn(300, 40), torch.randn(n, 40)
    product = _linear(w, None, chunk_min=1000, transpose=True, pack_rows=8)  # 12,000 >= chunk_min
    assert isinstance(product, fast_decode._Transposed) and len(fast_decode._copies_of(product)) == 2
    torch.testing.assert_close(product(x), F.linear(x, w), atol=1e-5, rtol=1e-5)
    small = _linear(w, None, chunk_min=10**6, transpose=True, pack_rows=8)  # below chunk_min: one copy
    assert not isinstance(small, fast_decode._Transposed) and len(fast_decode._copies_of(small)) == 1


def test_engine_counts_the_memory_its_weight_copies_take():
    m = tiny_gpt()
    linears = [m.lm_head] + [x for x in m.modules() if isinstance(x, nn.Linear) and x is not m.lm_head]
    weights = sum(x.weight.numel() * 4 for x in linears)
    assert Engine(m, max_batch=1).copies_bytes == weights  # tiny: every product over a transposed copy
    assert Engine(m, max_batch=1, fast=False).copies_bytes == 0


@pytest.mark.parametrize("flavour", [{}, LLAMA], ids=["gpt2", "llama"])
def test_engine_tokens_equal_with_and_without_fast_path(flavour):
    m = tiny_gpt(**flavour)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 8, 15, 16], [30, 31, 32, 33]]
    for params in (
        SamplingParams(max_tokens=12, temperature=0.0),
        SamplingParams(max_tokens=12, temperature=0.9, top_k=20, seed=7),
        SamplingParams(max_tokens=12, temperature=0.0, repetition_penalty=1.3),
    ):
        fast = Engine(m, max_batch=4).generate(prompts, params)
        slow = Engine(m, max_batch=4, fast=False).generate(prompts, params)
        assert [c.tokens for c in fast] == [c.tokens for c in slow]
    assert Engine(m).scheduler.fast is not None


def test_changed_weights_are_read_again_before_the_next_request():
    m = tiny_gpt()
    engine = Engine(m, max_batch=2)
    params = SamplingParams(max_tokens=10, temperature=0.0)
    before = engine.generate([[1, 2, 3]], params)[0].tokens
    with torch.no_grad():  # what an optimizer step does: change parameters in place
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    m.blocks[0].attn.qkv.weight = nn.Parameter(m.blocks[0].attn.qkv.weight.detach().clone() * 1.5)  # replaced
    after = engine.generate([[1, 2, 3]], params)[0].tokens
    reference = Engine(m, max_batch=2, fast=False).generate([[1, 2, 3]], params)[0].tokens
    assert after == reference and after != before


class _Adapter(nn.Linear):
    """Stands in for a LoRA or quantized Linear: a subclass with its own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2.0


def test_unknown_parts_fall_back_to_the_module_path():
    assert "mixture-of-experts" in unsupported(tiny_gpt(n_expert=2, moe_top_k=1))
    m = tiny_gpt()
    assert unsupported(m) is None
    m.train()
    assert "training mode" in unsupported(m)
    m.eval()
    handle = m.blocks[1].mlp.register_forward_hook(lambda mod, inp, out: out)
    assert "hooks" in unsupported(m)
    handle.remove()
    old = m.blocks[0].attn.qkv
    m.blocks[0].attn.qkv = _Adapter(old.in_features, old.out_features)
    assert "_Adapter" in unsupported(m)
    with pytest.raises(ValueError, match="use model.hidden"):
        FastDecoder(m)
    params = SamplingParams(max_tokens=6, temperature=0.0)
    engine = Engine(m, max_batch=2)
    assert engine.scheduler.fast is None
    assert (
        engine.generate([[1, 2]], params)[0].tokens
        == Engine(m, fast=False).generate([[1, 2]], params)[0].tokens
    )


def test_adapter_swapped_in_after_the_engine_was_built_is_respected():
    m = tiny_gpt()
    engine = Engine(m, max_batch=2)
    assert engine.scheduler.fast is not None
    old = m.blocks[0].mlp.fc
    adapter = _Adapter(old.in_features, old.out_features)
    adapter.load_state_dict(old.state_dict())
    m.blocks[0].mlp.fc = adapter
    params = SamplingParams(max_tokens=8, temperature=0.0)
    got = engine.generate([[5, 6, 7]], params)[0].tokens
    assert engine.scheduler.fast is None
    assert got == Engine(m, fast=False).generate([[5, 6, 7]], params)[0].tokens


def test_a_full_cache_is_refused_with_the_fix():
    m = tiny_gpt()
    cache = m.new_cache(1, 4, ragged=True)
    with torch.no_grad():
        m(torch.tensor([[1, 2, 3, 4]]), cache=cache.row(0))
    cache.set_length(0, 4)
    cache.n = 1
    with pytest.raises(ValueError, match="build a larger cache"):
        FastDecoder(m).step(torch.tensor([5]), cache)
