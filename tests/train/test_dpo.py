"""DPO: the loss equals its closed form on hand-computed log-probs; a tiny policy learns a preference."""

from __future__ import annotations

import math

import torch

from pocketgpt.train.dpo import dpo_loss


def test_dpo_loss_closed_form():
    pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-4.0, -9.0])
    rc, rr = torch.tensor([-3.5, -9.0]), torch.tensor([-3.5, -9.5])
    beta = 0.5
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    # h = beta((pc - rc) - (pr - rr)): row 1: 0.5(0.5 + 0.5) = 0.5; row 2: 0.5(-1 - 0.5) = -0.75
    want = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.75))) / 2
    assert math.isclose(loss.item(), want, rel_tol=1e-6)
    assert stats["reward_acc"].item() == 0.5
    assert math.isclose(stats["margin"].item(), (0.5 - 0.75) / 2, rel_tol=1e-6)


def test_dpo_at_the_reference_is_log2_and_gradient_pushes_apart():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    loss.backward()
    assert math.isclose(pc.grad.item(), -0.1 * 0.5, rel_tol=1e-6) and math.isclose(pr.grad.item(), 0.05, rel_tol=1e-6)
