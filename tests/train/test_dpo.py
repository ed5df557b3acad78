"""DPO: the loss equals its closed form on hand-computed log-probs; a tiny policy learns a preference."""

from __future__ import annotations

import math

import torch

from pocketgpt.train.dpo import chosen_nll, dpo_loss, dpo_stage


def test_dpo_loss_closed_form():
    pc, pr = torch.tensor([-3.0, -10.0]), torch.tensor([-4.0, -9.0])
    rc, rr = torch.tensor([-3.5, -9.0]), torch.tensor([-3.5, -9.5])
    beta = 0.5
    loss, stats = dpo_loss(pc, pr, rc, rr, beta)
    # h = beta((pc - rc) - (pr - rr)): row 1: 0.5(0.5 + 0.5) = 0.5; row 2: 0.5(-1 - 0.5) = -0.75
    want = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.75))) / 2
    assert math.isclose(loss.item(), want, rel_tol=1e-6)
    assert stats["reward_acc"].item() == 0.5
    assert math.isclose(stats["margin"].item(), (0.5 - 0.75) / 2, rel_tol=1e-6)


def test_dpo_at_the_reference_is_log2_and_gradient_pushes_apart():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    loss.backward()
    assert math.isclose(pc.grad.item(), -0.1 * 0.5, rel_tol=1e-6) and math.isclose(
        pr.grad.item(), 0.05, rel_tol=1e-6
    )


def test_chosen_nll_is_per_token_and_averaged_over_pairs():
    # -(-6) / 3 = 2 nats per token, -(-1) / 1 = 1: mean 1.5
    assert math.isclose(chosen_nll(torch.tensor([-6.0, -1.0]), torch.tensor([3.0, 1.0])).item(), 1.5)


def test_dpo_stage_adds_the_chosen_answers_nll():
    from pocketgpt.config import ModelConfig
    from pocketgpt.model.gpt import GPT
    from pocketgpt.text import specials
    from pocketgpt.text.bpe import Tokenizer
    from pocketgpt.text.chat import POCKETGPT
    from pocketgpt.text.preferences import Pair
    from pocketgpt.train.logprobs import token_logprobs

    tok = Tokenizer.train(
        "正面 负面 positive negative " * 20,
        256 + len(specials.RESERVED) + 10,
        special_tokens=specials.RESERVED,
        progress=False,
    )
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, d_model=32))
    pairs = [Pair("good or bad? 好", "positive", "negative"), Pair("这条评论？", "正面", "负面啊")]
    plain = dpo_stage(model, tok, pairs, pairs, batch_size=2, beta=0.1, template=POCKETGPT)
    with_nll = dpo_stage(model, tok, pairs, pairs, batch_size=2, beta=0.1, nll_coef=0.5, template=POCKETGPT)
    batch = next(iter(plain.batches("train", 0, 1)))
    base, _ = plain.loss(model, batch)
    total, stats = with_nll.loss(model, batch)
    # independently: the chosen rows are the first half; their answer tokens are where resp is 1
    with torch.no_grad():
        logp = token_logprobs(model, batch["ids"], batch["mask"])[:2] * batch["resp"][:2]  # (2, T - 1)
        want = (-logp.sum(-1) / batch["resp"][:2].sum(-1)).mean()
    assert math.isclose(stats["nll"], want.item(), rel_tol=1e-5)
    assert math.isclose(total.item(), base.item() + 0.5 * want.item(), rel_tol=1e-5)
    assert stats["chosen_shift"] == 0.0 and stats["rejected_shift"] == 0.0  # the model is its own reference
