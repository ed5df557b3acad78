"""Heads: small modules that turn a trunk's hidden states (B, T, C) into task outputs.

Three heads, one idea each, all reading the *same* trunk (`GPT.hidden(idx)` or `BERT(idx)`):
  - `ClassificationHead`: GPT-1's W_y, a linear layer on the hidden state at the extract token
    (Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training", sec. 3.2).
  - `RewardHead`: a scalar per sequence read at the final non-pad token, as in the InstructGPT
    reward model (Ouyang et al. 2022, sec. 3.5; Stiennon et al. 2020 before it).
  - `ValueHead`: a scalar per token, the critic V(s_t) that PPO's advantage estimates need
    (Schulman et al. 2017; Ouyang et al. 2022 initialise it from the reward model).

The position helpers below say *where* to read; the heads say *what* to compute there. This module
knows nothing of tokenizers, losses or training loops.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pocketgpt.errors import DataError


# -- where to read -------------------------------------------------------------------------------
def extract_positions(idx: torch.Tensor, extract_id: int) -> torch.Tensor:
    """Position of the last `extract_id` token in each row of `idx` (B, T) -> (B,) long.

    GPT-1 appends an extract token to every task input and classifies from its hidden state; the
    *last* occurrence is used so a stray extract token in the text cannot move the read point.
    """
    hits = idx == extract_id  # (B, T)
    missing = (~hits.any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise DataError(
            f"row(s) {missing[:5]} have no extract token (id {extract_id}); "
            "format each example with the task template so it ends with the extract token"
        )
    return _last_true(hits)


def last_non_pad_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the final real token in each row; `attention_mask` (B, T) is True/1 for real tokens.

    Works for right padding (`[a b c 0 0]` -> 2) and left padding (`[0 0 a b c]` -> 4) alike.
    """
    mask = attention_mask.bool()  # (B, T)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise DataError(f"row(s) {empty[:5]} are all padding; drop empty sequences before scoring them")
    return _last_true(mask)


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Pick one hidden state per row: hidden (B, T, C), positions (B,) -> (B, C)."""
    rows = torch.arange(hidden.size(0), device=hidden.device)  # (B,)
    return hidden[rows, positions.to(hidden.device)]  # (B, C)


def _last_true(mask: torch.Tensor) -> torch.Tensor:
    # argmax returns the first maximum, so weight each True by its position to get the last one
    T = mask.size(1)
    pos = torch.arange(T, device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask, pos, -1).argmax(dim=1)  # (B,)


# -- what to compute there ------------------------------------------------------------------------
def _init_linear(linear: nn.Linear, std: float = 0.02) -> nn.Linear:
    # GPT-1 (sec. 4.1) initialises every weight from N(0, 0.02); biases start at zero
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


class ClassificationHead(nn.Module):
    """GPT-1's W_y: P(y | x) = softmax(h_l^m W_y), h_l^m the hidden state at the extract token.

    forward(hidden (B, T, C), positions (B,)) -> logits (B, n_classes). Use `extract_positions`
    for the positions; pass the logits to cross-entropy (Radford et al. 2018, eq. 3-4).
    """

    def __init__(self, d_model: int, n_classes: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)  # GPT-1 used 0.1 on the classifier
        self.proj = _init_linear(nn.Linear(d_model, n_classes, bias=bias))

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = gather_positions(hidden, positions)  # (B, C)
        return self.proj(self.dropout(h))  # (B, n_classes)


class RewardHead(nn.Module):
    """A scalar reward r(x, y) read at the final non-pad token (Ouyang et al. 2022, sec. 3.5).

    forward(hidden (B, T, C), positions (B,)) -> rewards (B,). Use `last_non_pad_positions`: the
    final token is the only one whose hidden state has seen the whole prompt + response.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = _init_linear(nn.Linear(d_model, 1))

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = gather_positions(hidden, positions)  # (B, C)
        return self.proj(h).squeeze(-1)  # (B,)


class ValueHead(nn.Module):
    """A scalar value estimate for every position: hidden (B, T, C) -> values (B, T).

    PPO's critic: V(s_t) for the state after token t (Schulman et al. 2017). `positions` is not
    needed (every token gets a value); mask padded positions in the loss, not here.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = _init_linear(nn.Linear(d_model, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden).squeeze(-1)  # (B, T)
