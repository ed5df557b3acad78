"""The encoder-decoder Transformer: causality, cross-attention, padding, KV cache, learning, size."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.config import ModelConfig, get_preset
from pocketgpt.errors import ConfigMismatch
from pocketgpt.model.seq2seq import Seq2Seq, cross_attend, memory_kv

PAD, BOS, EOS = 0, 1, 2


def _cfg(**kw) -> ModelConfig:
    base = dict(arch="seq2seq", vocab_size=16, block_size=32, n_layer=2, n_encoder_layer=2, n_head=2, d_model=32,
                d_ff=64, activation="relu", norm_placement="post", positions="sinusoidal", dropout=0.0,
                pad_id=PAD, bos_id=BOS, eos_id=EOS)
    return ModelConfig(**{**base, **kw})


def _model(seed: int = 0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(_cfg(**kw)).eval()


def test_decoder_position_t_is_independent_of_later_target_tokens():
    model = _model()
    src = torch.randint(3, 16, (2, 6))
    tgt = torch.randint(3, 16, (2, 7))
    base = model(src, tgt)
    for t in range(6):
        changed = tgt.clone()
        changed[:, t + 1:] = torch.randint(3, 16, changed[:, t + 1:].shape)
        changed[:, t + 1] = (tgt[:, t + 1] + 1 - 3) % 13 + 3  # a different token for sure
        out = model(src, changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_cross_attention_sees_the_source_but_not_its_padding():
    model = _model()
    src = torch.tensor([[5, 6, 7, 8, PAD, PAD]])
    tgt = torch.tensor([[BOS, 9, 10]])
    base = model(src, tgt)
    # any real source token matters
    assert not torch.allclose(model(torch.tensor([[5, 6, 11, 8, PAD, PAD]]), tgt), base)
    # a padded source token masked out changes nothing, whatever id sits there
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    torch.testing.assert_close(model(torch.tensor([[5, 6, 7, 8, 13, 4]]), tgt, src_mask=mask), base)
    # and a padded batch row equals the same sequence without padding
    torch.testing.assert_close(model(torch.tensor([[5, 6, 7, 8]]), tgt), base, atol=1e-5, rtol=1e-4)


def test_hoisted_cross_attention_equals_the_cross_attention_module():
    model = _model(n_kv_head=1)  # grouped-query too
    cross = model.decoder[0].cross
    x, memory = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    mem_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    want = cross(x, memory, memory_mask=mem_mask)
    torch.testing.assert_close(cross_attend(cross, x, memory_kv(cross, memory), mem_mask), want)


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_kv_cached_decoding_equals_full_recomputation(placement):
    model = _model(norm_placement=placement, positions="sinusoidal")
    src = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, PAD, PAD]])
    tgt = torch.randint(3, 16, (2, 8))
    memory = model.encode(src)
    full = model.decode(tgt, memory, src != PAD)  # (2, 8, V)
    cache = model.new_cache(2, 8)
    steps = [model.decode(tgt[:, :3], memory, src != PAD, cache=cache)]  # a prompt, then one token at a time
    steps += [model.decode(tgt[:, t:t + 1], memory, src != PAD, cache=cache) for t in range(3, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 8 and cache.cross is not None


def _reverse_batch(gen: torch.Generator, B: int = 32, L: int = 4) -> tuple[torch.Tensor, ...]:
    src = torch.randint(3, 16, (B, L), generator=gen)  # (B, L)
    out = src.flip(1)
    tgt_in = torch.cat([torch.full((B, 1), BOS), out], dim=1)  # (B, L+1)
    targets = torch.cat([out, torch.full((B, 1), EOS)], dim=1)  # (B, L+1)
    return src, tgt_in, targets


@pytest.mark.slow
def test_a_tiny_seq2seq_learns_to_reverse():
    torch.manual_seed(0)
    model = Seq2Seq(_cfg(n_layer=1, n_encoder_layer=1, n_head=4))  # post-LN, ReLU, sinusoids: the paper's recipe
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(0)
    for _ in range(250):
        loss = model(*_reverse_batch(gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src, _, targets = _reverse_batch(torch.Generator().manual_seed(123), B=32)
    pred = model.greedy(src, 6)
    exact = (pred[:, :5] == targets).all(dim=1).float().mean().item()
    assert exact > 0.9, f"only {exact:.0%} of held-out sequences reversed exactly (final loss {loss.item():.3f})"


def test_transformer_base_has_the_papers_size():
    with torch.device("meta"):  # no memory, no init cost: only shapes
        model = Seq2Seq(get_preset("transformer-base"))
    # 37000 x 512 shared embedding + 6 encoder layers (3.15M) + 6 decoder layers (4.20M): the paper's ~65M
    # counts 63.1M with its 37000-token joint BPE vocabulary
    assert model.num_params() == 37000 * 512 + 6 * 3_152_384 + 6 * 4_204_032


def test_round_trip_through_the_model_directory(tmp_path):
    from pocketgpt.model.checkpoint import build_model, load_model, save_model

    torch.manual_seed(0)
    model = build_model(_cfg(positions="learned"))
    assert isinstance(model, Seq2Seq)
    save_model(model.eval(), tmp_path / "s2s")
    loaded, _ = load_model(tmp_path / "s2s")
    src, tgt = torch.randint(3, 16, (2, 5)), torch.randint(3, 16, (2, 4))
    torch.testing.assert_close(loaded(src, tgt), model(src, tgt))


def test_greedy_needs_bos_and_the_loss_ignores_minus_one():
    with pytest.raises(ConfigMismatch, match="bos_id"):
        _model(bos_id=-1).greedy(torch.tensor([[5, 6]]), 3)
    model = _model()
    src, tgt = torch.randint(3, 16, (2, 5)), torch.randint(3, 16, (2, 4))
    targets = torch.randint(3, 16, (2, 4))
    logits = model(src, tgt)
    partial = targets.clone()
    partial[:, 2:] = -1
    want = torch.nn.functional.cross_entropy(logits[:, :2].reshape(-1, 16), targets[:, :2].reshape(-1))
    torch.testing.assert_close(model(src, tgt, partial), want)


def test_experts_replace_every_ffn_and_the_aux_loss_joins_the_loss():
    model = _model(n_expert=2, moe_top_k=1).train()
    assert all(hasattr(blk, "moe") for blk in [*model.encoder, *model.decoder])
    src, tgt, targets = torch.randint(3, 16, (2, 5)), torch.randint(3, 16, (2, 4)), torch.randint(3, 16, (2, 4))
    loss = model(src, tgt, targets)
    ce = torch.nn.functional.cross_entropy(model.decode(tgt, model.encode(src)).flatten(0, 1), targets.flatten())
    assert model.aux_loss().item() > 0
    torch.testing.assert_close(loss, ce + 0.01 * model.aux_loss(), atol=1e-5, rtol=1e-5)
