"""The chunked language-model loss against the plain recipe F.cross_entropy(F.linear(h, W)): the
same loss and the same gradients for h and W, in fp32 and under bf16 autocast, with ignored targets,
several chunk sizes, and through the GPT's forward (tied embeddings)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.model import lm_loss
from pocketgpt.model.lm_loss import linear_cross_entropy
from tests.infer.helpers import tiny_gpt


def _inputs(n: int = 50, c: int = 16, v: int = 37, ignore_every: int = 4):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, c, generator=g)
    w = torch.randn(v, c, generator=g) * 0.3
    t = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = -1
    return h, w, t


def _plain(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-1)


def _loss_and_grads(fn, h, w, t, bf16: bool = False):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn(h, w, t)
    (loss * 3.0).backward()  # an upstream gradient other than 1 must scale both gradients
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_fp32_loss_and_gradients_equal_the_plain_recipe(chunk):
    h, w, t = _inputs()
    want = _loss_and_grads(_plain, h, w, t)
    got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk), h, w, t)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_matches_the_plain_recipe_under_autocast():
    h, w, t = _inputs(n=64, c=32, v=100)
    want = _loss_and_grads(_plain, h, w, t, bf16=True)
    got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, 16), h, w, t, bf16=True)
    torch.testing.assert_close(got[0], want[0], atol=1e-3, rtol=1e-3)
    for a, b in zip(got[1:], want[1:], strict=True):  # bf16 outputs (8-bit mantissa): ~1 unit of the last place
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-2 * b.abs().max().item(), rtol=0)


@pytest.mark.parametrize("kept_rows", [16, 40, 1000])
def test_bf16_grad_w_over_several_groups_of_kept_rows(monkeypatch, kept_rows):
    """Under autocast the softmax gradients are kept for one grad_w product per group of rows: a
    group of exactly one chunk, groups that end mid-way through the rows, and one group for all."""
    h, w, t = _inputs(n=100, c=32, v=50)
    monkeypatch.setattr(lm_loss, "KEPT_BYTES", kept_rows * 50 * 2)  # rows of V=50 bf16 values
    want = _loss_and_grads(_plain, h, w, t, bf16=True)
    got = _loss_and_grads(lambda h, w, t: linear_cross_entropy(h, w, t, 16), h, w, t, bf16=True)
    torch.testing.assert_close(got[0], want[0], atol=1e-3, rtol=1e-3)
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-2 * b.abs().max().item(), rtol=0)


def test_only_one_input_needs_a_gradient():
    """A frozen head (LoRA) or frozen trunk: the gradient that is wanted, nothing else computed."""
    h, w, t = _inputs()
    for needs in ((True, False), (False, True)):
        hh, ww = h.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
        linear_cross_entropy(hh, ww, t, 7).backward()
        hp, wp = h.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
        _plain(hp, wp, t).backward()
        for mine, ref in ((hh, hp), (ww, wp)):
            assert (mine.grad is None) == (ref.grad is None)
            if ref.grad is not None:
                torch.testing.assert_close(mine.grad, ref.grad, atol=1e-6, rtol=1e-5)


def test_batched_shapes_no_grad_and_every_target_ignored():
    h, w, t = _inputs(n=24)
    with torch.no_grad():
        got = linear_cross_entropy(h.view(4, 6, -1), w, t.view(4, 6), chunk=5)
    torch.testing.assert_close(got, _plain(h, w, t))
    all_ignored = torch.full_like(t, -1)
    assert torch.isnan(linear_cross_entropy(h, w, all_ignored)) and torch.isnan(_plain(h, w, all_ignored))
    with pytest.raises(ValueError, match="do not match"):
        linear_cross_entropy(h, w, t[:-1])


def test_the_chunked_loss_only_where_it_pays_and_is_safe():
    """More logits than one chunk: chunked; one chunk or fewer: the plain recipe; fp16 autocast:
    the plain recipe (its gradients would come before the loss scaler)."""
    h = torch.randn(4, 5, 3)  # 20 rows
    v_big = lm_loss.CHUNK_LOGITS // 20 + 1
    assert lm_loss.usable(h, v_big)
    assert not lm_loss.usable(h, lm_loss.CHUNK_LOGITS // 20)  # exactly one chunk of logits
    with torch.autocast("cpu", dtype=torch.float16):
        assert not lm_loss.usable(h, v_big)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lm_loss.usable(h, v_big)


@pytest.mark.parametrize("tied", [True, False])
def test_gpt_loss_and_gradients_equal_the_full_logits(tied, monkeypatch):
    from pocketgpt.model import gpt as gpt_mod

    model = tiny_gpt(tie_embeddings=tied)
    monkeypatch.setattr(lm_loss, "CHUNK_LOGITS", 2 * model.config.vocab_size)  # chunks of 2 rows: 14 of them
    calls = []
    monkeypatch.setattr(gpt_mod, "linear_cross_entropy", lambda *a: calls.append(1) or linear_cross_entropy(*a))
    idx = torch.randint(0, model.config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(1))
    targets = idx.roll(-1, dims=1)
    targets[:, -2:] = -1
    loss = model(idx, targets)
    assert calls  # the model took the chunked loss
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(idx)  # the plain recipe by hand
    plain = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    plain.backward()
    torch.testing.assert_close(loss, plain, atol=1e-6, rtol=1e-6)
    for a, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)
