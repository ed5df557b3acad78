"""Mixture of experts: the feed-forward layer replaced by E routed experts.

Each token goes to its top-k experts (out of `config.n_expert`), chosen by a learned router, and
its output is the gate-weighted sum of those experts' outputs (Shazeer et al. 2017; GShard,
Lepikhin et al. 2020; Switch Transformer, Fedus et al. 2021; Mixtral, Jiang et al. 2024). A model
gets E times the FFN parameters while each token still pays for only k FFNs.

Two things keep the experts evenly used during training:
  - the load-balancing loss E * sum_e f_e * P_e (Switch eq. 4-6), pulled towards its minimum 1.0;
  - a capacity per expert, ceil(capacity_factor * tokens * k / E): token-slots over it are
    dropped, i.e. skip that expert (the block's residual carries the token past it).
Capacity applies in training only. At inference every token reaches its experts, so a token's
output never depends on what else is in the batch (and KV-cached decoding of a single token equals
the full forward).

Owns routing, capacity and the aux loss; the experts themselves are `blocks.FeedForward`, and the
`Block`/`GPT` that use this module add the aux loss to the LM loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.blocks import FeedForward


def expert_capacity(n_tokens: int, n_expert: int, top_k: int, capacity_factor: float) -> int:
    """Token-slots each expert may take: ceil(capacity_factor * tokens * k / E) (GShard sec. 2.2)."""
    return math.ceil(capacity_factor * n_tokens * top_k / n_expert)


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, n_expert: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss, E * sum_e f_e * P_e (Fedus et al. 2021, eq. 4-6).

    probs (N, E): router softmax; expert_idx (N, k): the chosen experts. f_e is the fraction of the
    N*k routing choices that picked e (not differentiable), P_e the mean router probability of e
    (differentiable). It equals 1.0 when routing is perfectly even and grows towards E as it skews.
    """
    f = torch.bincount(expert_idx.flatten(), minlength=n_expert).to(probs.dtype) / expert_idx.numel()  # (E,)
    P = probs.mean(dim=0)  # (E,)
    return n_expert * torch.sum(f * P)


def slot_positions(expert_idx: torch.Tensor, n_expert: int) -> torch.Tensor:
    """Each routing choice's place in its expert's queue: expert_idx (N, k) -> (N, k) long.

    Queues fill first-choice-first (all tokens' top-1 choices, then all top-2 choices, as in GShard),
    in token order within a choice rank, so a token loses its 2nd expert before anyone loses a 1st.
    """
    N, k = expert_idx.shape
    onehot = F.one_hot(expert_idx.t().reshape(k * N), n_expert)  # (k*N, E) rank-major order
    place = (onehot.cumsum(dim=0) - 1) * onehot  # (k*N, E) queue position in the chosen column
    return place.sum(dim=1).view(k, N).t()  # (N, k)


class MoE(nn.Module):
    """Top-k routed experts in place of the FFN: x (B, T, C) -> (B, T, C).

    After each forward: `aux_loss` (scalar load-balancing loss), `last_load` ((E,) fraction of the
    routing choices each expert received) and `last_dropped` (fraction of token-slots dropped for
    capacity; always 0.0 in eval mode).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not 1 <= config.moe_top_k <= config.n_expert:
            raise ConfigMismatch(f"moe_top_k={config.moe_top_k} must be between 1 and n_expert={config.n_expert}")
        self.n_expert = config.n_expert
        self.top_k = config.moe_top_k
        self.capacity_factor = config.moe_capacity_factor
        self.router = nn.Linear(config.d_model, config.n_expert, bias=False)
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_expert))
        self.aux_loss = torch.zeros(())
        self.last_load = torch.zeros(config.n_expert)
        self.last_dropped = 0.0

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router for flat tokens x (N, C) -> (probs (N, E), gates (N, k), expert_idx (N, k)).

        gates are the top-k probabilities renormalised to sum to 1 per token (Mixtral's form).
        """
        probs = F.softmax(self.router(x).float(), dim=-1)  # (N, E) in fp32: the router is precision-sensitive
        top_p, expert_idx = probs.topk(self.top_k, dim=-1)  # (N, k), (N, k)
        gates = top_p / top_p.sum(dim=-1, keepdim=True)  # (N, k)
        return probs, gates, expert_idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(B * T, C)  # (N, C)
        probs, gates, expert_idx = self.route(flat)

        keep = torch.ones_like(expert_idx, dtype=torch.bool)  # (N, k)
        if self.training and self.capacity_factor > 0:
            cap = expert_capacity(B * T, self.n_expert, self.top_k, self.capacity_factor)
            keep = slot_positions(expert_idx, self.n_expert) < cap  # (N, k)

        out = torch.zeros_like(flat)  # (N, C) dropped slots add nothing: the residual passes the token on
        for e, expert in enumerate(self.experts):
            tok, slot = torch.nonzero((expert_idx == e) & keep, as_tuple=True)  # (n_e,), (n_e,)
            if tok.numel() == 0:
                continue
            y = expert(flat[tok].unsqueeze(0)).squeeze(0)  # (n_e, C)
            out.index_add_(0, tok, y * gates[tok, slot, None].to(y.dtype))

        self.aux_loss = load_balancing_loss(probs, expert_idx, self.n_expert)
        with torch.no_grad():
            self.last_load = torch.bincount(expert_idx.flatten(), minlength=self.n_expert).float() / expert_idx.numel()
            self.last_dropped = 1.0 - keep.float().mean().item()
        return out.view(B, T, C)
