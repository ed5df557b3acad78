"""Sampling filters keep exactly the right support; seeds reproduce; the loop matches a no-cache loop."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.config import ModelConfig
from pocketgpt.errors import DataError
from pocketgpt.infer.generate import generate
from pocketgpt.infer.sampling import (
    SamplingParams,
    apply_penalties,
    filter_logits,
    filter_min_p,
    filter_top_k,
    filter_top_p,
    penalise_rows,
    pick,
    sample_next,
    sample_rows,
)
from pocketgpt.model.gpt import GPT


def _support(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.0, 0.5, 2.5])
    assert _support(filter_top_k(logits, 3)) == {1, 3, 5}
    assert _support(filter_top_k(logits, 1)) == {1}
    assert _support(filter_top_k(logits, 6)) == set(range(6))


@pytest.mark.parametrize(
    "p,want",
    [
        (0.5, {0}),
        (0.5000001, {0, 1}),
        (0.7, {0, 1}),
        (0.8, {0, 1, 2}),
        (0.95, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_smallest_set_with_mass_at_least_p(p, want):
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])  # shuffled so order in the row does not matter
    kept = _support(filter_top_p(probs.log()[perm], p))
    assert {int(perm[i]) for i in kept} == want


def test_top_p_brute_force_on_random_rows():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        logits = torch.randn(12, generator=g, dtype=torch.float64) * 2
        p = float(torch.rand(1, generator=g))
        probs = logits.softmax(-1)
        order = probs.argsort(descending=True).tolist()
        size = next(n for n in range(1, 13) if probs[order[:n]].sum() >= p)  # smallest prefix reaching p
        assert _support(filter_top_p(logits, p)) == set(order[:size])


def test_sample_respects_support_seed_and_greedy():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(200, 1)
    draws = sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 4}
    a = sample_next(logits, temperature=1.3, top_p=0.9, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, temperature=1.3, top_p=0.9, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and len(set(a.tolist())) > 1
    assert sample_next(logits, temperature=0.0).eq(4).all()


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, d_model=16)).eval()


def test_generate_seeded_reproducible_and_greedy_matches_full_recompute():
    m = _tiny_gpt()
    a = generate(m, [1, 2, 3], max_tokens=8, temperature=1.0, seed=3)
    b = generate(m, [1, 2, 3], max_tokens=8, temperature=1.0, seed=3)
    assert a.tokens == b.tokens and len(a.tokens) == 8 and a.prompt_tokens == 3
    greedy = generate(m, [1, 2, 3], max_tokens=6, temperature=0.0)
    ids = [1, 2, 3]
    with torch.no_grad():
        for _ in range(6):  # the same thing without a cache
            ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    assert greedy.tokens == ids[3:]


def test_generate_stops_at_stop_id_and_at_context_end():
    m = _tiny_gpt()
    first = generate(m, [1, 2], max_tokens=8, temperature=2.0, seed=1).tokens
    cut = next(i for i in range(1, 8) if first[i] not in first[:i])  # a token not seen before
    stopped = generate(m, [1, 2], max_tokens=8, temperature=2.0, seed=1, stop_ids=[first[cut]])
    assert stopped.tokens == first[:cut] and stopped.finish_reason == "stop"
    full = generate(m, [1] * 10, max_tokens=100, temperature=0.5, seed=0)
    # 10 prompt + 6 fed tokens fill block_size 16; the logits at the last position still give a 7th
    assert len(full.tokens) == 7 and full.finish_reason == "length"
    with pytest.raises(DataError):
        generate(m, [], max_tokens=3)


@pytest.mark.parametrize(
    "min_p,want", [(0.0, {0, 1, 2, 3, 4}), (0.29, {0, 1, 2}), (0.31, {0, 1}), (1.0, {0})]
)
def test_min_p_keeps_tokens_at_least_min_p_times_the_top(min_p, want):
    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
    assert _support(filter_min_p(probs.log(), min_p)) == want


def test_penalties_change_exactly_the_right_logits():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0])
    seen = torch.tensor([True, True, False, False, False])
    counts = torch.tensor([0, 0, 2, 1, 0])
    rep = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), seen, counts)
    assert rep.tolist() == [1.0, -2.0, 0.5, 3.0, 1.0]  # positive seen / 2, negative seen * 2
    pf = apply_penalties(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), seen, counts)
    assert pf.tolist() == [2.0, -1.0, 0.5 - 0.5 - 0.5, 3.0 - 0.25 - 0.5, 1.0]
    bias = apply_penalties(
        logits, SamplingParams(logit_bias={1: 10.0, 4: -1.0}, repetition_penalty=2.0), seen, counts
    )
    assert bias.tolist() == [1.0, 4.5, 0.5, 3.0, 0.0]  # bias first, then the penalty sees the biased logit
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0, 1.0]  # the caller's row is untouched


def test_penalties_steer_generation():
    m = _tiny_gpt()
    plain = generate(m, [1, 2, 3], max_tokens=12, temperature=0.0)
    strong = generate(m, [1, 2, 3], max_tokens=12, temperature=0.0, frequency_penalty=100.0)
    assert len(set(strong.tokens)) == 12  # every repeat is penalised out of reach
    assert len(set(plain.tokens)) < 12
    forced = generate(m, [1, 2, 3], max_tokens=5, temperature=0.0, logit_bias={7: 1000.0})
    assert forced.tokens == [7] * 5


def test_sample_rows_draws_from_the_filtered_distribution():
    """Inverse-CDF sampling on the top-k survivors == softmax of filter_logits (the reference)."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    for p in [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=5),
        SamplingParams(top_k=6, top_p=0.8),
        SamplingParams(top_p=0.9, min_p=0.1),
    ]:
        n = 20000
        g = torch.Generator().manual_seed(0)
        draws = torch.tensor(sample_rows(logits.repeat(n, 1), [p] * n, [g] * n))
        freq = torch.bincount(draws, minlength=8).double() / n
        want = filter_logits(logits, p).softmax(-1).double()
        assert torch.allclose(freq, want, atol=0.015), (p, freq, want)
        assert set(draws.tolist()) <= _support(filter_logits(logits, p))


def test_sample_rows_each_row_depends_only_on_its_own_seed():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=g)
    params = [SamplingParams(top_k=10, top_p=0.9, temperature=0.8)] * 3 + [
        SamplingParams(temperature=1.1)
    ] * 3
    together = sample_rows(logits, params, [torch.Generator().manual_seed(s) for s in range(6)])
    alone = [pick(logits[i], params[i], torch.Generator().manual_seed(i)) for i in range(6)]
    assert together == alone


def test_penalise_rows_gives_each_row_its_own_penalties():
    """Rows with different settings and histories, penalised together == each penalised alone."""
    g = torch.Generator().manual_seed(2)
    V = 30
    logits = torch.randn(4, V, generator=g) * 3
    params = [
        SamplingParams(repetition_penalty=1.3),
        SamplingParams(),
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={3: 2.0}),
        SamplingParams(repetition_penalty=0.7, frequency_penalty=1.0),
    ]
    seen = [torch.rand(V, generator=g) < 0.3 for _ in params]
    counts = [torch.randint(0, 3, (V,), generator=g) for _ in params]
    together = penalise_rows(logits, params, seen, counts)
    for i, p in enumerate(params):
        alone = apply_penalties(logits[i], p, seen[i], counts[i])
        assert torch.equal(together[i], alone), i
    x, r = logits[0], 1.3  # row 0 by hand: seen positives divided by r, seen negatives multiplied
    assert torch.allclose(together[0], torch.where(seen[0], torch.where(x > 0, x / r, x * r), x))
    assert torch.equal(together[1], logits[1])
