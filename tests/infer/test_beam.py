"""Beam search: beam 1 is greedy; a wider beam finds sequences greedy misses; scores are the true log-probs."""

from __future__ import annotations

import torch

from pocketgpt.config import ModelConfig
from pocketgpt.infer.beam import beam_search
from pocketgpt.model.seq2seq import Seq2Seq

PAD, BOS, EOS = 0, 1, 2


def _model(seed: int = 0, **kw) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = dict(
        arch="seq2seq",
        vocab_size=16,
        block_size=32,
        n_layer=2,
        n_encoder_layer=2,
        n_head=2,
        d_model=32,
        d_ff=64,
        activation="relu",
        norm_placement="post",
        positions="sinusoidal",
        dropout=0.0,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
    )
    return Seq2Seq(ModelConfig(**{**cfg, **kw})).eval()


@torch.no_grad()
def _logprob(model: Seq2Seq, src: list[int], tokens: list[int]) -> float:
    """Sum of log p(token | prefix) by one full forward, no cache: the independent reference score."""
    tgt_in = torch.tensor([[BOS, *tokens[:-1]]])
    logp = model(torch.tensor([src]), tgt_in)[0].log_softmax(-1)  # (T, V)
    return float(logp[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


def test_beam_one_is_greedy():
    for seed in range(3):
        model = _model(seed)
        src = [5, 9, 3, 12, 7]
        greedy = model.greedy(torch.tensor([src]), 10)[0].tolist()
        hyp = beam_search(model, src, beam=1, max_new_tokens=10)
        assert hyp.tokens == greedy
        assert abs(hyp.score - _logprob(model, src, hyp.tokens)) < 1e-4


def test_wider_beam_finds_a_higher_scoring_sequence_than_greedy():
    model = _model(1, eos_id=-1)  # no EOS: every hypothesis has exactly 6 tokens, so scores compare fairly
    better = 0
    for src in ([5, 9, 3], [12, 7, 7, 4], [3, 3, 10, 11, 6], [8, 14]):
        greedy = beam_search(model, src, beam=1, max_new_tokens=6)
        wide = beam_search(model, src, beam=4, max_new_tokens=6)
        assert abs(wide.score - _logprob(model, src, wide.tokens)) < 1e-4
        assert wide.score >= greedy.score - 1e-5  # never worse
        better += wide.score > greedy.score + 1e-4 and wide.tokens != greedy.tokens
    assert better >= 1  # and on at least one constructed source strictly better


@torch.no_grad()
def test_seq2seq_cached_decoding_equals_full_recomputation():
    model = _model(2)
    src, tgt = torch.tensor([[5, 9, 3, 12, 7, PAD]]), torch.tensor([[BOS, 4, 8, 11, 3, 6, 9, 10]])
    memory = model.encode(src)
    full = model.decode(tgt, memory, src != PAD)  # (1, 8, V) no cache
    cache = model.new_cache(1, 8)
    steps = [model.decode(tgt[:, :2], memory, src != PAD, cache=cache)]  # prefill 2, then one at a time
    steps += [model.decode(tgt[:, t : t + 1], memory, src != PAD, cache=cache) for t in range(2, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
