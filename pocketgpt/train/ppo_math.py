"""The arithmetic of PPO for language models, as functions of tensors (no models, no data).

Every tensor is (B, L) over the scored tokens of a rollout (see train/logprobs.py), with `mask`
(B, L) = 1 on the response's tokens. In the order a PPO step uses them:

    r_t   = -beta (log pi(y_t) - log pi_ref(y_t))  [+ score on the last token]    kl_rewards
            (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, eq. 2), beta fixed or adaptive  KLController
    A_t   = sum_l (gamma lam)^l delta_{t+l},  delta_t = r_t + gamma V_{t+1} - V_t     gae (Schulman et al. 2016)
    R_t   = A_t + V_t                                                              the value targets
    A     <- (A - mean) / std over the batch's response tokens                        whiten
    L_pi  = -mean min(rho A, clip(rho, 1 - eps, 1 + eps) A),  rho = exp(logp - logp_old)   policy_loss
    L_V   = 1/2 mean max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)      value_loss
                                                                                 (Schulman et al. 2017)
Means are over response tokens only (`masked_mean`). Knows nothing of models, tokens or the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x where mask is 1 (a scalar)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x where mask is 1."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    return ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (masked entries come back as 0). With
    shift_mean=False only the scale changes (how rewards are normalised: their sign still means something)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
               beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: the KL penalty on every response token, the sequence's score added on its
    last one. score (B,), the rest (B, L) -> (rewards (B, L), per-token KL estimate (B, L))."""
    kl = (logp - ref_logp) * mask  # (B, L) log pi / pi_ref at the sampled token: 0 when pi == pi_ref
    rewards = -beta * kl  # (B, L)
    last = last_positions(mask)  # (B,)
    rows = torch.arange(mask.size(0), device=mask.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards, kl


def last_positions(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of mask (B, L) -> (B,)."""
    L = mask.size(1)
    pos = torch.arange(L, device=mask.device).expand_as(mask)  # (B, L)
    return torch.where(mask.bool(), pos, -1).argmax(dim=1)  # (B,)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's response tokens (the episode ends after the
    last one, so V there is 0). rewards, values, mask (B, L) -> (advantages, returns) (B, L), 0 off the mask."""
    values = values * mask
    rewards = rewards * mask
    B, L = rewards.shape
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # (B,)
    for t in reversed(range(L)):
        next_value = values[:, t + 1] if t + 1 < L else torch.zeros_like(running)  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        running = delta + gamma * lam * running
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (to minimise) and its diagnostics: the share of tokens whose ratio was
    clipped, and approx-KL(old || new) = mean((rho - 1) - log rho) (always >= 0)."""
    log_ratio = (logp - old_logp) * mask  # (B, L)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """The critic's clipped squared error: the new value may move at most `clip` from the rollout's."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    worst = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(worst, mask)


@dataclass
class KLController:
    """beta for the KL penalty. Fixed when `target` is None; else adaptive (Ziegler et al. 2019,
    sec. 2.2): e = clip(KL / target - 1, -0.2, 0.2), beta <- beta (1 + e n / horizon), so beta
    grows while the policy drifts further than `target` nats from the reference and shrinks when it stays closer."""

    beta: float = 0.05
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        """Feed the last rollouts' mean KL (nats per sequence) and their count; returns the new beta."""
        if self.target is not None and self.target > 0:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta
