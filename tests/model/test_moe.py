"""Mixture of experts: routing, gates, the Switch aux loss, capacity drops, and a tiny MoE GPT that learns.

References are written independently of moe.py: per-token Python loops over the experts, and
router weights constructed by hand to force even or skewed loads.
"""

from __future__ import annotations

import math

import pytest
import torch

from pocketgpt.config import ModelConfig
from pocketgpt.model.moe import MoE, expert_capacity, load_balancing_loss, slot_positions


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, d_model=8, d_ff=16, n_expert=4, moe_top_k=2,
                activation="gelu", dropout=0.0)
    return ModelConfig(**{**base, **kw})


def _moe(seed: int = 0, **kw) -> MoE:
    torch.manual_seed(seed)
    return MoE(_cfg(**kw))


def test_router_picks_exactly_the_top_k_experts_and_gates_sum_to_one():
    top_k = 2
    moe = _moe(moe_top_k=top_k)
    x = torch.randn(50, 8)
    probs, gates, idx = moe.route(x)
    assert idx.shape == gates.shape == (50, 2)
    for n in range(50):
        p = torch.softmax(x[n] @ moe.router.weight.T, dim=-1)
        ranked = sorted(range(4), key=lambda e: -p[e].item())[:top_k]
        assert sorted(idx[n].tolist()) == sorted(ranked)
        assert len(set(idx[n].tolist())) == top_k
        torch.testing.assert_close(gates[n], p[idx[n]] / p[idx[n]].sum())
    torch.testing.assert_close(gates.sum(-1), torch.ones(50))


def test_forward_equals_a_per_token_loop_over_chosen_experts():
    moe = _moe(moe_top_k=2).eval()
    x = torch.randn(2, 5, 8)
    want = torch.zeros_like(x)
    for b in range(2):
        for t in range(5):
            p = torch.softmax(x[b, t] @ moe.router.weight.T, dim=-1)
            top = p.topk(2)
            for g, e in zip(top.values / top.values.sum(), top.indices.tolist(), strict=True):
                want[b, t] += g * moe.experts[e](x[b, t].view(1, 1, 8)).view(8)
    torch.testing.assert_close(moe(x), want, atol=1e-6, rtol=1e-5)
    assert moe.last_dropped == 0.0
    torch.testing.assert_close(moe.last_load.sum(), torch.tensor(1.0))


def _forced_router(moe: MoE, targets: list[int]) -> torch.Tensor:
    """Tokens that are one-hot vectors, and router weights sending token i to expert targets[i]."""
    C = moe.router.weight.size(1)
    x = torch.zeros(len(targets), C)
    with torch.no_grad():
        moe.router.weight.zero_()
        for i, e in enumerate(targets):
            x[i, i] = 1.0
            moe.router.weight[e, i] = 8.0
    return x


def test_aux_loss_is_one_when_even_and_larger_when_skewed():
    moe = _moe(moe_top_k=1)
    x_even = _forced_router(moe, [0, 1, 2, 3, 0, 1, 2, 3])
    moe.eval()(x_even.unsqueeze(0))
    torch.testing.assert_close(moe.aux_loss, torch.tensor(1.0))
    torch.testing.assert_close(moe.last_load, torch.full((4,), 0.25))

    x_skew = _forced_router(moe, [0, 0, 0, 0, 0, 0, 1, 2])
    moe(x_skew.unsqueeze(0))
    # independent reference: E * sum_e (share of tokens at e) * (mean router probability of e)
    probs = torch.softmax(x_skew @ moe.router.weight.T, dim=-1)
    share = [sum(1 for e in probs.argmax(-1).tolist() if e == j) / 8 for j in range(4)]
    want = 4 * sum(share[j] * probs[:, j].mean().item() for j in range(4))
    assert moe.aux_loss.item() == pytest.approx(want, rel=1e-5)
    assert moe.aux_loss.item() > 2.0
    # the uniform router is the minimum of the Switch form, for any top-k choice
    uniform = torch.full((6, 4), 0.25)
    assert load_balancing_loss(uniform, torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3], [0, 2], [1, 3]]), 4).item() == 1.0


def test_aux_loss_trains_the_router():
    moe = _moe()
    moe(torch.randn(1, 6, 8))
    moe.aux_loss.backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_capacity_drops_are_counted_and_dropped_tokens_pass_through():
    moe = _moe(moe_top_k=1, moe_capacity_factor=1.0)
    x = _forced_router(moe, [0] * 6 + [1, 2])  # 6 tokens want expert 0; capacity = ceil(1.0 * 8 * 1 / 4) = 2
    assert expert_capacity(8, 4, 1, 1.0) == 2
    y = moe.train()(x.unsqueeze(0)).squeeze(0)
    assert moe.last_dropped == pytest.approx(4 / 8)
    # first come, first served: tokens 0 and 1 reach expert 0, tokens 2..5 skip it entirely (zero
    # update, so the block's residual carries them through unchanged)
    assert torch.equal(y[2:6], torch.zeros(4, 8))
    for i, e in [(0, 0), (1, 0), (6, 1), (7, 2)]:
        torch.testing.assert_close(y[i], moe.experts[e](x[i].view(1, 1, 8)).view(8))  # k=1: gate is 1
    # in eval mode nothing is dropped
    moe.eval()(x.unsqueeze(0))
    assert moe.last_dropped == 0.0


def test_second_choices_lose_their_slot_before_first_choices():
    # token 0 picks (0, 1); tokens 1, 2 pick (1, 0): expert 1 gets two first choices before token 0's second
    idx = torch.tensor([[0, 1], [1, 0], [1, 0]])
    assert slot_positions(idx, 2).tolist() == [[0, 2], [0, 1], [1, 2]]


def test_a_batch_of_one_token_works_in_both_modes():
    moe = _moe()
    for mode in (True, False):
        y = moe.train(mode)(torch.randn(1, 1, 8))
        assert y.shape == (1, 1, 8) and torch.isfinite(y).all()
    assert math.isfinite(moe.aux_loss.item())


def test_top_k_out_of_range_is_a_config_error():
    from pocketgpt.errors import ConfigMismatch

    with pytest.raises(ConfigMismatch, match="moe_top_k"):
        MoE(_cfg(n_expert=2, moe_top_k=3))


def test_a_tiny_moe_gpt_learns_a_repeated_pattern():
    from pocketgpt.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(_cfg(n_layer=2, d_model=32, d_ff=64, n_head=2, moe_top_k=2, activation="gelu_tanh"))
    assert all(hasattr(blk, "moe") for blk in model.blocks)
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6] * 3)  # 24 tokens
    x, y = pattern[:-1].repeat(4, 1), pattern[1:].repeat(4, 1)  # (4, 23)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model(x[:, :16], y[:, :16])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    # the loss includes the aux term, and every expert's router row received gradient
    ce = torch.nn.functional.cross_entropy(model(x[:, :16]).flatten(0, 1), y[:, :16].flatten())
    assert model(x[:, :16], y[:, :16]).item() == pytest.approx(ce.item() + 0.01 * model.aux_loss().item(), rel=1e-5)
    assert (model.blocks[0].moe.router.weight.grad.abs().sum(dim=1) > 0).all()


def test_moe_gpt_single_token_cached_decoding_matches_the_full_forward():
    from pocketgpt.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(_cfg()).eval()
    idx = torch.randint(0, 64, (1, 7))
    full = model(idx)
    cache = model.new_cache(1, 16)
    steps = [model(idx[:, t:t + 1], cache=cache) for t in range(7)]  # one token per forward
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


def test_moe_gpt_round_trips_through_the_model_directory(tmp_path):
    from pocketgpt.model.checkpoint import load_model, save_model
    from pocketgpt.model.gpt import GPT

    torch.manual_seed(0)
    model = GPT(_cfg()).eval()
    save_model(model, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert "blocks.1.moe.experts.3.fc.weight" in loaded.state_dict()
    idx = torch.randint(0, 64, (2, 5))
    torch.testing.assert_close(loaded(idx), model(idx))
