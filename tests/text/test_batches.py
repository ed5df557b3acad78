"""Batch sources over token streams: windows and targets, determinism by seed, exact resume, the
global-batch rule (1 process x 2b == 2 ranks x b) and validation windows that repeat and wrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pocketgpt.errors import DataError
from pocketgpt.text.batches import ArrayStream, SequentialBatches, TokenBatches, batches_from_tokens
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.shards import open_shards, write_shards
from pocketgpt.text.specials import RESERVED

IDS = np.arange(5000)  # token i has id i, so a window is a run of consecutive ids


def test_rows_are_windows_and_targets_are_shifted():
    x, y = next(batches_from_tokens(IDS, 4, 16, seed=3))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))  # consecutive tokens
    assert torch.equal(y, x + 1)  # y[t] is the token after x[t]
    assert int(x.min()) >= 0 and int(y.max()) < len(IDS)


def test_random_windows_reach_both_ends():
    ids = np.arange(20)
    batches = batches_from_tokens(ids, 8, 4, seed=0)
    starts = {int(t) for _ in range(20) for t in next(batches)[0][:, 0]}
    assert starts == set(range(16))  # every start 0..len-T-1 (a window needs T+1 tokens) and no other


def test_batches_are_a_function_of_the_seed():
    a, b = batches_from_tokens(IDS, 4, 16, seed=3), batches_from_tokens(IDS, 4, 16, seed=3)
    for _ in range(3):
        assert torch.equal(next(a)[0], next(b)[0])
    assert not torch.equal(next(batches_from_tokens(IDS, 4, 16, seed=1))[0],
                           next(batches_from_tokens(IDS, 4, 16, seed=2))[0])


@pytest.mark.parametrize("kind", [TokenBatches, SequentialBatches])
def test_state_dict_resumes_exactly(kind):
    a = kind(ArrayStream(IDS), 4, 16, seed=5)
    for _ in range(3):
        next(a)
    saved = json.loads(json.dumps(a.state_dict()))  # JSON-able: the loop writes it into trainer.json
    assert saved["step"] == 3
    expected = [next(a) for _ in range(4)]
    b = kind(ArrayStream(IDS), 4, 16, seed=5)
    b.load_state_dict(saved)
    for x, y in expected:
        bx, by = next(b)
        assert torch.equal(x, bx) and torch.equal(y, by)


def test_resume_with_other_settings_is_refused():
    saved = batches_from_tokens(IDS, 4, 16, seed=5).state_dict()
    with pytest.raises(DataError, match="seed=5"):
        batches_from_tokens(IDS, 4, 16, seed=6).load_state_dict(saved)
    with pytest.raises(DataError, match="global_batch"):
        batches_from_tokens(IDS, 2, 16, seed=5).load_state_dict(saved)
    batches_from_tokens(IDS, 2, 16, seed=5, rank=1, world=2).load_state_dict(saved)  # same global batch: fine


@pytest.mark.parametrize("kind", [TokenBatches, SequentialBatches])
def test_one_process_with_2b_equals_two_ranks_with_b(kind):
    whole = kind(ArrayStream(IDS), 6, 16, seed=9)
    ranks = [kind(ArrayStream(IDS), 3, 16, seed=9, rank=r, world=2) for r in range(2)]
    for _ in range(4):
        x, y = next(whole)
        parts = [next(r) for r in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
        assert not torch.equal(parts[0][0], parts[1][0])  # the ranks see different rows


def test_sequential_windows_tile_the_split_and_wrap():
    ids = np.arange(50)  # (50 - 1) // 8 = 6 whole windows of 8 (+1 target token)
    seq = SequentialBatches(ArrayStream(ids), 4, 8)
    first, second = next(seq)[0], next(seq)[0]
    assert first[:, 0].tolist() == [0, 8, 16, 24] and second[:, 0].tolist() == [32, 40, 0, 8]  # wraps around
    assert torch.equal(next(SequentialBatches(ArrayStream(ids), 4, 8, seed=123))[0], first)  # seed unused


def test_a_split_smaller_than_one_block_is_refused(tmp_path):
    tok = Tokenizer.train("a few words only, twice: a few words only", 270, special_tokens=RESERVED, progress=False)
    small = tmp_path / "small.txt"
    small.write_text("a few words only\n\nand a second paragraph", encoding="utf-8")
    write_shards([small], tok, tmp_path / "s", val_fraction=0.1, progress=False)
    val = open_shards(tmp_path / "s", "val")
    with pytest.raises(DataError, match=rf"val split has {len(val)} tokens, fewer than block_size\+1=257"):
        SequentialBatches(val, 2, 256)
    with pytest.raises(DataError, match="fewer than block_size"):
        TokenBatches(open_shards(tmp_path / "s", "train"), 2, 256, seed=0)
    with pytest.raises(DataError, match="rank 2 outside"):
        batches_from_tokens(IDS, 2, 8, rank=2, world=2)


def test_batches_over_shards_equal_batches_over_the_same_ids(tmp_path):
    text = "\n\n".join(f"paragraph {i}: 第{i}段，一些中文 and some English words." for i in range(200))
    tok = Tokenizer.train(text, 300, special_tokens=RESERVED, progress=False)
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    write_shards([tmp_path / "c.txt"], tok, tmp_path / "s", val_fraction=0.0, shard_tokens=97, progress=False)
    stream = open_shards(tmp_path / "s")
    assert len(stream.parts) > 10  # windows of 33 tokens cross shard boundaries
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in stream.parts])
    on_disk, in_memory = TokenBatches(stream, 8, 32, seed=1), batches_from_tokens(flat, 8, 32, seed=1)
    for _ in range(5):
        assert torch.equal(next(on_disk)[0], next(in_memory)[0])
