"""PPO's arithmetic against plain Python loops and hand-computed values."""

from __future__ import annotations

import math

import torch

from pocketgpt.train.ppo_math import (
    KLController,
    gae,
    kl_rewards,
    masked_mean,
    policy_loss,
    value_loss,
    whiten,
)


def _gae_reference(rewards, values, gamma, lam):
    """GAE over one episode, written out: A_t = delta_t + gamma lam A_{t+1}, V after the end = 0."""
    n = len(rewards)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        nv = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * nv - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def test_gae_matches_a_plain_loop_with_prompt_and_padding():
    g = torch.Generator().manual_seed(0)
    B, L = 3, 9
    rewards, values = torch.randn(B, L, generator=g), torch.randn(B, L, generator=g)
    spans = [(2, 7), (0, 9), (4, 5)]  # response tokens [start, end) per row: prompt before, padding after
    mask = torch.zeros(B, L)
    for b, (s, e) in enumerate(spans):
        mask[b, s:e] = 1
    for gamma, lam in [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)]:
        adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
        for b, (s, e) in enumerate(spans):
            ra, rr = _gae_reference(rewards[b, s:e].tolist(), values[b, s:e].tolist(), gamma, lam)
            assert torch.allclose(adv[b, s:e], torch.tensor(ra), atol=1e-5)
            assert torch.allclose(ret[b, s:e], torch.tensor(rr), atol=1e-5)
        assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_kl_rewards_penalty_per_token_and_score_on_last():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    rewards, kl = kl_rewards(torch.tensor([2.0]), logp, ref, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.0, 0.0, 0.5, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[0.0, 0.0, -0.05 + 2.0, 0.0]]))


def test_kl_exactly_zero_when_policy_is_reference():
    logp = torch.randn(4, 6)
    rewards, kl = kl_rewards(torch.zeros(4), logp, logp.clone(), torch.ones(4, 6), beta=0.3)
    assert (kl == 0).all() and (rewards == 0).all()


def test_clipped_surrogate_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = policy_loss(new, old, adv, mask, clip=0.2)
    # token 1: min(1.5*1, 1.2*1) = 1.2; token 2: min(0.5*-1, 0.8*-1) = -0.8; token 3: min(2.2, 2.2) = 2.2
    assert math.isclose(loss.item(), -(1.2 - 0.8 + 2.2) / 3, rel_tol=1e-6)
    assert math.isclose(stats["clipfrac"].item(), 2 / 3, rel_tol=1e-6)
    want_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert math.isclose(stats["approx_kl"].item(), want_kl, rel_tol=1e-5)


def test_surrogate_gradient_is_zero_where_clipped():
    new = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = policy_loss(new, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), clip=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 1] != 0


def test_value_clipping_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    v = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[1.0, 1.0]])
    # token 1: unclipped err 0, clipped (0.2 - 1)^2 = 0.64 -> 0.64; token 2: (0.1-1)^2 = 0.81 both
    assert math.isclose(value_loss(v, old, ret, torch.ones(1, 2), clip=0.2).item(), 0.5 * (0.64 + 0.81) / 2, rel_tol=1e-6)


def test_whiten_masked():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert abs(masked_mean(w, mask).item()) < 1e-6
    assert math.isclose(w[0, :3].std().item(), 1.0, rel_tol=1e-4) and w[0, 3] == 0
    ws = whiten(x, mask, shift_mean=False)
    assert math.isclose(masked_mean(ws, mask).item(), 2.0, rel_tol=1e-5)


def test_kl_controller_fixed_and_adaptive():
    assert KLController(0.1).update(50.0, 64) == 0.1
    c = KLController(0.1, target=6.0, horizon=100)
    assert math.isclose(c.update(12.0, 10), 0.1 * (1 + 0.2 * 10 / 100))  # far above target: clipped +20%
    before = c.beta
    assert c.update(3.0, 10) < before  # below target: beta shrinks
