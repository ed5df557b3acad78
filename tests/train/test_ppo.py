"""PPO through the one loop on a toy reward: the reward rises within a few rollouts while KL to the
reference starts at exactly 0 and grows. (A LoRA policy against the detached base: tests/train/test_rlhf_cli.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from pocketgpt.config import ModelConfig
from pocketgpt.model.gpt import GPT
from pocketgpt.text import specials
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.chat import POCKETGPT
from pocketgpt.train.loop import TrainConfig, train
from pocketgpt.train.ppo import PolicyWithValue, PPOConfig, Rollouts, _pack, ppo_stage
from pocketgpt.train.ppo_math import KLController

PROMPTS = [{"messages": [{"role": "user", "content": f"say something {i} 说点什么"}]} for i in range(8)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = " ".join(f"say something {i} 说点什么 x y z" for i in range(20)) + "\n"
    return Tokenizer.train(
        text * 3, 256 + len(specials.RESERVED) + 20, special_tokens=specials.RESERVED, progress=False
    )


def _policy(tok, seed=0) -> PolicyWithValue:
    torch.manual_seed(seed)
    gpt = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, d_model=64))
    return PolicyWithValue(gpt)


def _has_xyz(items, texts):
    """The toy reward: 1 when the answer contains x, y or z (a random tiny model does so ~20% of the time)."""
    return [1.0 if any(c in t for c in "xyz") else 0.0 for t in texts]


def _cfg(steps, lr=1e-3):
    return TrainConfig(
        max_steps=steps,
        batch_size=8,
        lr=lr,
        warmup_steps=0,
        schedule="constant",
        eval_every=0,
        ckpt_every=0,
        log_every=1,
        progress=False,
        device="cpu",
        eval_batches=1,
        weight_decay=0.0,
    )


def test_pack_marks_answer_tokens():
    ids, mask, resp = _pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad=0)
    assert ids.tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert resp.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]  # entry t scores token t + 1


def test_first_rollout_has_exactly_zero_kl(tok):
    policy = _policy(tok)
    import copy

    ref = copy.deepcopy(policy.gpt).eval()
    src = Rollouts(
        policy,
        ref,
        _has_xyz,
        PROMPTS,
        tok,
        PPOConfig(rollout_batch=8, minibatch=4, max_tokens=8),
        KLController(0.1),
        template=POCKETGPT,
    )
    batch = next(src)
    assert src.stats["kl"] == 0.0
    assert set(batch) >= {"ids", "old_logp", "adv", "returns", "stat_reward"}


@pytest.mark.slow
def test_ppo_raises_a_toy_reward_while_kl_grows(tok, tmp_path):
    policy = _policy(tok)
    cfg = PPOConfig(rollout_batch=16, minibatch=8, epochs=2, max_tokens=12, beta=0.02, seed=1)
    stage = ppo_stage(policy, tok, _has_xyz, PROMPTS, cfg, template=POCKETGPT)
    result = train(stage, _cfg(cfg.steps_per_rollout() * 10, lr=3e-3), tmp_path / "ppo")
    rows = [r for r in result.history if "reward" in r]
    first = [r for r in rows if r["step"] <= cfg.steps_per_rollout()]
    last = rows[-2 * cfg.steps_per_rollout() :]  # the last two rollouts (one rollout of 16 answers is noisy)
    assert first[0]["kl"] == 0.0
    r0 = sum(r["reward"] for r in first) / len(first)
    r1 = sum(r["reward"] for r in last) / len(last)
    assert r1 > r0 + 0.25, (r0, r1)
    assert last[-1]["kl"] > 0.0
    assert {"entropy", "clipfrac", "value_loss", "approx_kl", "resp_len"} <= set(rows[-1])
    assert (tmp_path / "ppo" / "value_head.safetensors").is_file()
    assert json.loads((tmp_path / "ppo" / "train" / "run.json").read_text())["stage"] == "ppo"
