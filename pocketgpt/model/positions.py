"""Where a token is: the three ways a Transformer learns token order.

Attention by itself is permutation-invariant (a bag of vectors), so order must be injected:
  - `LearnedPositions`: a trained vector per position, added to the token embedding (GPT-1/2).
  - `sinusoidal_table`: fixed sines and cosines of geometric wavelengths, added to the embedding
    (Vaswani et al. 2017, sec. 3.5).
  - `RoPE`: rotary embeddings rotate each query/key pair of dimensions by an angle proportional to
    the position, so q·k depends only on the *offset* between two tokens (Su et al. 2021,
    "RoFormer"; used by Llama). Applied inside attention, not added to the embedding.

`blocks.py` re-exports these names. This module knows nothing of attention or models.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LearnedPositions(nn.Module):
    """A (block_size, C) table of trained position vectors; state-dict name `weight` (GPT-2's wpe)."""

    def __init__(self, block_size: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(block_size, d_model))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.weight[positions]  # (..., T, C)


def sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)) (Vaswani et al. 2017,
    sec. 3.5). Returns (n_positions, d_model) float32; computed in float64 so large positions stay exact."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(d/2),)
    angle = pos / torch.pow(10000.0, two_i / d_model)  # (P, ceil(d/2))
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return table.float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: Hugging Face's RoPE layout, in which
    dimension i is paired with i + hs/2 (not with its neighbour i+1 as in the RoFormer paper)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RoPE(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the `transformers` Llama convention.

    Pair (i, i + hs/2) of a head is rotated by angle pos * theta^(-2i/hs). Since rotations compose,
    <R(m) q, R(n) k> = <q, R(n - m) k>: attention scores see only relative positions. No parameters,
    no buffers (so the state dict stays the contract's); the angles are recomputed per call in float64,
    which costs T * hs/2 multiplications and never goes stale when the model changes dtype.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) or (B, T) long -> cos, sin of shape (T, hs) or (B, 1, T, hs)."""
        hs = self.head_dim
        inv_freq = self.theta ** (-torch.arange(0, hs, 2, dtype=torch.float64, device=positions.device) / hs)
        freqs = positions.to(torch.float64)[..., None] * inv_freq  # (..., T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., T, hs)
        if emb.dim() == 3:  # per-row positions (left padding): broadcast over heads
            emb = emb[:, None]  # (B, 1, T, hs)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B, nh, T, hs), positions (T,) or (B, T) -> x rotated, same shape."""
        cos, sin = self.cos_sin(positions, x.dtype)
        return x * cos + rotate_half(x) * sin


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, Tk) 1 = real token, 0 = padding -> (B, Tk) positions counting real tokens only, so a
    left-padded row gets the same positions as the unpadded sequence (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
