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


def _tiny_tokenizer():
    from pocketgpt.text import specials
    from pocketgpt.text.bpe import Tokenizer

    text = " ".join(f"question {i} 问题 yes 好 no 不" for i in range(30)) + "\n"
    return Tokenizer.train(
        text * 2, 256 + len(specials.RESERVED) + 16, special_tokens=specials.RESERVED, progress=False
    )


def test_reward_model_learns_a_separable_preference(tmp_path):
    """Chosen answers say "yes 好", rejected ones "no 不"; held-out prompts are unseen questions."""
    from pocketgpt.config import ModelConfig
    from pocketgpt.model.gpt import GPT
    from pocketgpt.text.preferences import Pair
    from pocketgpt.train.loop import TrainConfig, train
    from pocketgpt.train.reward import RewardModel, load_reward_model, reward_stage, score_texts

    tok = _tiny_tokenizer()
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, d_model=32))
    pairs = [
        Pair(f"question {i} 问题", "yes 好" if i % 2 else "yes", "no 不" if i % 3 else "no")
        for i in range(60)
    ]
    model = RewardModel(gpt)
    stage = reward_stage(model, tok, pairs[:40], pairs[40:], batch_size=8, seed=0)
    cfg = TrainConfig(
        max_steps=30,
        batch_size=8,
        lr=3e-3,
        warmup_steps=0,
        schedule="constant",
        eval_every=0,
        ckpt_every=0,
        log_every=5,
        progress=False,
        device="cpu",
        eval_batches=1,
        weight_decay=0.0,
    )
    result = train(stage, cfg, tmp_path / "rm")
    acc = [r for r in result.history if "pair_acc" in r][-1]["pair_acc"]
    assert acc > 0.95
    rm, tok2 = load_reward_model(tmp_path / "rm")  # the saved directory scores like the trained model
    got = score_texts(rm, tok2, ["question 99 问题"] * 2, ["yes 好", "no 不"])
    assert got[0] > got[1]
    assert torch.allclose(
        torch.tensor(got),
        torch.tensor(score_texts(model.eval(), tok, ["question 99 问题"] * 2, ["yes 好", "no 不"])),
        atol=1e-5,
    )
