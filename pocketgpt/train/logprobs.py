"""Per-token log-probabilities of a given continuation, from the model's one forward (STYLE rule 14).

    logits = model(ids, attention_mask=mask)                   (B, T, V)   the same forward as training
    logp[b, t] = log softmax(logits[b, t])[ids[b, t + 1]]      (B, T - 1)  the probability of the next token

Entry t scores token t + 1 given tokens 0..t, so a `response_mask` is (B, T - 1) too: 1 where the
scored token belongs to the answer (not the prompt, not padding). PPO, DPO and the reward data all
read log-probs here. Padding is given by `attention_mask` (1 = real token), left or right.
Knows nothing of rewards, losses or text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) -> log p(ids[:, 1:] | prefix) (B, T - 1); with `with_entropy`, also the entropy
    of each next-token distribution (B, T - 1). Masked positions get whatever the model says: mask
    them in the loss, as everywhere in this package."""
    logits = model(ids, attention_mask=attention_mask)  # (B, T, V)
    return logprobs_from_logits(logits[:, :-1], ids[:, 1:], with_entropy=with_entropy)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, *,
                         with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """logits (B, L, V), targets (B, L) -> log p(target) (B, L) [, entropy (B, L)], in fp32."""
    logp_all = F.log_softmax(logits.float(), dim=-1)  # (B, L, V)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L)
    if not with_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, L)
    return logp, entropy


def sequence_logprob(model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor,
                     response_mask: torch.Tensor) -> torch.Tensor:
    """log p(response | prompt) summed over the response's tokens: ids (B, T) -> (B,)."""
    logp = token_logprobs(model, ids, attention_mask)  # (B, T - 1)
    return (logp * response_mask).sum(-1)  # (B,)
