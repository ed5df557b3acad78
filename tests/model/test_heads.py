"""Heads read the right positions and compute the right thing there (plain-Python references)."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.errors import DataError
from pocketgpt.model.heads import (
    ClassificationHead,
    RewardHead,
    ValueHead,
    extract_positions,
    gather_positions,
    last_non_pad_positions,
)

EXTRACT, PAD = 9, 0


def _last_index(row: list[int], pred) -> int:
    return max(i for i, t in enumerate(row) if pred(t))


def test_extract_positions_match_a_python_scan():
    rows = [[5, 6, 9, 0, 0], [9, 4, 4, 9, 0], [1, 2, 3, 4, 9], [9, 0, 0, 0, 0]]
    got = extract_positions(torch.tensor(rows), EXTRACT).tolist()
    assert got == [_last_index(r, lambda t: t == EXTRACT) for r in rows] == [2, 3, 4, 0]


def test_extract_positions_missing_token_is_a_data_error():
    with pytest.raises(DataError, match=r"row\(s\) \[1\]"):
        extract_positions(torch.tensor([[1, 9], [1, 2]]), EXTRACT)


def test_last_non_pad_positions_right_and_left_padding():
    rows = [[3, 4, 5, 0, 0], [0, 0, 3, 4, 5], [1, 1, 1, 1, 1], [7, 0, 0, 0, 0]]
    mask = torch.tensor(rows) != PAD
    assert last_non_pad_positions(mask).tolist() == [_last_index(r, lambda t: t != PAD) for r in rows]
    with pytest.raises(DataError, match="all padding"):
        last_non_pad_positions(torch.zeros(2, 3, dtype=torch.bool))


def test_classification_head_reads_the_extract_token_only():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    head = ClassificationHead(8, 4)
    pos = torch.tensor([1, 4, 0])
    want = torch.stack([hidden[b, p] for b, p in enumerate(pos.tolist())]) @ head.proj.weight.T + head.proj.bias
    torch.testing.assert_close(head(hidden, pos), want)
    # changing any other position leaves the logits unchanged; changing the read one does not
    other = hidden.clone()
    other[0, 3] += 5.0
    torch.testing.assert_close(head(other, pos), head(hidden, pos))
    other[0, 1] += 5.0
    assert not torch.allclose(head(other, pos)[0], head(hidden, pos)[0])


def test_reward_head_uses_the_last_non_pad_token():
    torch.manual_seed(0)
    idx = torch.tensor([[4, 5, 6, PAD], [4, 5, PAD, PAD]])
    hidden = torch.randn(2, 4, 8)
    head = RewardHead(8)
    r = head(hidden, last_non_pad_positions(idx != PAD))
    assert r.shape == (2,)
    want = torch.stack([hidden[0, 2], hidden[1, 1]]) @ head.proj.weight[0] + head.proj.bias
    torch.testing.assert_close(r, want)
    # the hidden states at padded positions cannot change the reward
    hidden[:, 3] = 100.0
    hidden[1, 2] = 100.0
    torch.testing.assert_close(head(hidden, last_non_pad_positions(idx != PAD)), r)


def test_value_head_gives_one_scalar_per_token():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    head = ValueHead(8)
    v = head(hidden)
    assert v.shape == (2, 5)
    torch.testing.assert_close(v[1, 3], hidden[1, 3] @ head.proj.weight[0] + head.proj.bias[0])


def test_gather_positions_is_a_per_row_index():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    assert gather_positions(hidden, torch.tensor([2, 0])).tolist() == [[4.0, 5.0], [6.0, 7.0]]
