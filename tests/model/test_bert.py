"""BERT: bidirectional attention, padding, the 15% / 80-10-10 masking procedure, the MLM loss."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.config import ModelConfig, get_preset
from pocketgpt.model.bert import BERT, mask_tokens, mlm_loss

PAD, CLS, SEP, MASK = 0, 1, 2, 3
V = 1000


def _model(seed: int = 0, **kw) -> BERT:
    base = dict(arch="bert", vocab_size=V, block_size=32, n_layer=2, n_head=2, d_model=32, d_ff=64,
                activation="gelu", norm_placement="post", pad_id=PAD, mask_id=MASK, dropout=0.0)
    torch.manual_seed(seed)
    return BERT(ModelConfig(**{**base, **kw})).eval()


def test_every_position_depends_on_tokens_on_both_sides():
    model = _model()
    idx = torch.randint(4, V, (1, 8))
    base = model(idx)
    assert base.shape == (1, 8, 32)
    for t in range(8):
        for other in (t - 1, t + 1):  # a token to the left and one to the right
            if 0 <= other < 8:
                changed = idx.clone()
                changed[0, other] = 4 + (idx[0, other] - 4 + 1) % (V - 4)
                assert not torch.allclose(model(changed)[0, t], base[0, t]), (t, other)


def test_padding_is_invisible_to_real_tokens():
    model = _model()
    real = torch.tensor([[CLS, 17, 18, 19, SEP]])
    padded = torch.tensor([[CLS, 17, 18, 19, SEP, PAD, PAD]])
    torch.testing.assert_close(model(padded)[:, :5], model(real), atol=1e-5, rtol=1e-4)
    # explicit mask: whatever sits under the mask changes nothing
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    junk = torch.tensor([[CLS, 17, 18, 19, SEP, 55, 66]])
    torch.testing.assert_close(model(junk, attention_mask=mask)[:, :5], model(real), atol=1e-5, rtol=1e-4)


def test_token_types_change_the_embedding():
    model = _model()
    idx = torch.tensor([[CLS, 17, SEP, 18, SEP]])
    types = torch.tensor([[0, 0, 0, 1, 1]])
    assert not torch.allclose(model(idx, token_type_ids=types), model(idx))


def test_masking_rates_on_ten_thousand_tokens():
    idx = torch.randint(4, V, (100, 100))  # 10k ordinary tokens
    idx[:, 0], idx[:, -1] = CLS, SEP
    inputs, targets = mask_tokens(idx, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(0),
                                  special_ids=(PAD, CLS, SEP))
    chosen = targets != -1
    n = chosen.sum().item()
    assert n / (100 * 98) == pytest.approx(0.15, abs=0.01)
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # specials are never chosen
    assert torch.equal(targets[chosen], idx[chosen])  # targets are the original tokens
    assert torch.equal(inputs[~chosen], idx[~chosen])  # everything else untouched
    masked = (inputs[chosen] == MASK).sum().item()
    kept = (inputs[chosen] == idx[chosen]).sum().item()
    randomised = n - masked - kept
    assert masked / n == pytest.approx(0.8, abs=0.03)
    assert kept / n == pytest.approx(0.1, abs=0.02)
    assert randomised / n == pytest.approx(0.1, abs=0.02)
    # the same seed gives the same corruption; another seed a different one
    again = mask_tokens(idx, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(0),
                        special_ids=(PAD, CLS, SEP))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], targets)
    other = mask_tokens(idx, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other[1], targets)


def test_mlm_loss_ignores_unmasked_positions():
    model = _model()
    idx = torch.randint(4, V, (2, 10))
    inputs, targets = mask_tokens(idx, mask_id=MASK, vocab_size=V, generator=torch.Generator().manual_seed(3),
                                  mask_prob=0.3)
    assert (targets != -1).any()
    logits = model.mlm_logits(inputs).detach().requires_grad_(True)
    loss = mlm_loss(logits, targets)
    loss.backward()
    chosen = targets != -1
    assert logits.grad[~chosen].abs().max() == 0.0  # unmasked positions get no gradient at all
    want = torch.nn.functional.cross_entropy(logits[chosen], targets[chosen])  # mean over the masked ones
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(model(inputs, targets=targets), want)


def test_mlm_decoder_is_tied_and_bert_mini_builds():
    model = _model()
    assert model.mlm.decoder.weight is model.tok_emb.weight
    with torch.device("meta"):
        mini = BERT(get_preset("bert-mini"))
    assert 10e6 < mini.num_params() < 12e6  # 4 layers x 256: BERT-Mini's ~11M


def test_a_tiny_bert_learns_to_fill_in_a_pattern():
    torch.manual_seed(0)
    model = _model(vocab_size=16, n_layer=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    seq = torch.tensor([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]).repeat(16, 1)  # always the same sentence
    losses = []
    for _ in range(60):
        inputs, targets = mask_tokens(seq, mask_id=MASK, vocab_size=16, generator=gen, mask_prob=0.3)
        loss = model(inputs, targets=targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.3 * sum(losses[:10]) / 10


def test_round_trip_through_the_model_directory(tmp_path):
    from pocketgpt.model.checkpoint import build_model, load_model, save_model

    model = build_model(_model().config)
    assert isinstance(model, BERT)
    save_model(model.eval(), tmp_path / "bert")
    loaded, _ = load_model(tmp_path / "bert")
    idx = torch.randint(4, V, (2, 6))
    torch.testing.assert_close(loaded.mlm_logits(idx), model.mlm_logits(idx))
