"""Reward model: the pairwise loss and its gradient on a toy pair; a tiny RM learns a separable preference."""

from __future__ import annotations

import math

import torch

from pocketgpt.train.reward import pairwise_loss


def test_pairwise_loss_and_gradient_on_a_toy_pair():
    rc = torch.tensor([1.5], requires_grad=True)
    rr = torch.tensor([0.5], requires_grad=True)
    loss = pairwise_loss(rc, rr)
    assert math.isclose(loss.item(), -math.log(1 / (1 + math.exp(-1.0))), rel_tol=1e-6)
    loss.backward()
    s = 1 / (1 + math.exp(-1.0))
    assert math.isclose(rc.grad.item(), -(1 - s), rel_tol=1e-6)
    assert math.isclose(rr.grad.item(), 1 - s, rel_tol=1e-6)
