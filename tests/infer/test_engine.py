"""The engine: per-row KV cache == full recomputation; batched, continuous and threaded generation
give the same tokens as one request alone; cancellation frees the slot; stop strings end the text."""

from __future__ import annotations

import threading

import pytest
import torch

from pocketgpt.errors import DataError, PocketError
from pocketgpt.infer.engine import Engine
from pocketgpt.infer.generate import generate
from pocketgpt.infer.sampling import SamplingParams
from tests.infer.helpers import LLAMA, byte_tokenizer, tiny_gpt

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [4, 4, 8, 15, 16], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40]]


def _alone(model, prompt, params):
    return Engine(model, max_batch=1).generate([prompt], params)[0]


@pytest.mark.parametrize("flavour", [{}, LLAMA])
@torch.no_grad()
def test_slot_cache_decoding_equals_full_recomputation(flavour):
    m = tiny_gpt(**flavour)
    seqs = [
        [int(t) for t in torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(n))]
        for n in (12, 15, 9)
    ]
    starts = [3, 7, 1]  # ragged: each row has prefilled a different prefix
    cache = m.new_cache(4, 20, ragged=True)
    for i, (s, a) in enumerate(zip(seqs, starts, strict=True)):
        m(torch.tensor([s[:a]]), cache=cache.row(i))
        cache.set_length(i, a)
    cache.n = 3
    got = [[] for _ in seqs]
    for step in range(8):
        idx = torch.tensor([[s[a + step]] for s, a in zip(seqs, starts, strict=True)])  # (3, 1)
        for i, row in enumerate(m(idx, cache=cache)[:, -1]):
            got[i].append(row)
    for s, a, g in zip(seqs, starts, got, strict=True):
        full = m(torch.tensor([s[: a + 8]]))[0, a : a + 8]  # (8, V) without any cache
        torch.testing.assert_close(torch.stack(g), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flavour", [{}, LLAMA])
def test_batched_prompts_of_different_lengths_equal_one_by_one(flavour):
    m = tiny_gpt(**flavour)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    batched = Engine(m, max_batch=4).generate(PROMPTS, params)
    for p, b in zip(PROMPTS, batched, strict=True):
        assert b.tokens == _alone(m, p, params).tokens
        assert len(b.tokens) == 12 and b.finish_reason == "length" and b.prompt_tokens == len(p)


@pytest.mark.parametrize("flavour", [{}, LLAMA])
def test_prompts_of_one_length_prefilled_together_equal_one_by_one(flavour):
    """Same-length prompts share one prefill forward (SlotKVCache.rows): same tokens as alone, greedy
    and seeded sampling, and the same first-token logits as a full forward of each prompt."""
    m = tiny_gpt(**flavour)
    prompts = [[5, 6, 7, 8, 9, 10], [1, 1, 2, 3, 5, 8], [2], [40, 41, 42, 43, 44, 45], [9, 8]]
    for params in [SamplingParams(max_tokens=10, temperature=0.0), SamplingParams(max_tokens=10, seed=3)]:
        together = Engine(m, max_batch=8).generate(prompts, params)
        assert [c.tokens for c in together] == [_alone(m, p, params).tokens for p in prompts]
    cache = m.new_cache(4, 16, ragged=True)
    idx = torch.tensor(prompts[:2] + prompts[3:4])  # (3, 6)
    with torch.no_grad():
        got = m(idx, cache=cache.rows(1, 3))[:, -1]  # (3, V), written into slots 1..3
        want = m(idx)[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert cache.k[:, 1:4, :, :6].abs().sum() > 0 and cache.k[:, 0].abs().sum() == 0  # slot 0 untouched


def test_requests_joining_mid_flight_match_running_alone():
    m = tiny_gpt()
    params = [
        SamplingParams(max_tokens=10, temperature=0.0),
        SamplingParams(max_tokens=4, temperature=0.0, repetition_penalty=1.5),
        SamplingParams(max_tokens=9, temperature=0.0, frequency_penalty=0.7, presence_penalty=0.3),
        SamplingParams(max_tokens=6, temperature=0.0, logit_bias={5: 3.0}),
    ]
    engine = Engine(m, max_batch=3)  # fewer slots than requests: the fourth waits for a free one
    handles = []
    for p, sp in zip(PROMPTS, params, strict=True):
        handles.append(engine.submit(p, sp))
        engine.step()
        engine.step()  # the earlier requests advance before the next one joins
    while engine.step():
        pass
    for p, sp, h in zip(PROMPTS, params, handles, strict=True):
        assert h.result().tokens == _alone(m, p, sp).tokens


def test_seed_reproducible_in_any_company_and_temperature_near_zero_is_greedy():
    m = tiny_gpt()
    sp = SamplingParams(max_tokens=10, temperature=1.0, seed=5)
    a, b = _alone(m, PROMPTS[0], sp), _alone(m, PROMPTS[0], sp)
    assert a.tokens == b.tokens
    cold = _alone(m, PROMPTS[0], SamplingParams(max_tokens=10, temperature=1e-6, seed=1))
    assert cold.tokens == _alone(m, PROMPTS[0], SamplingParams(max_tokens=10, temperature=0.0)).tokens


def test_cancel_frees_the_slot_for_the_next_request():
    m = tiny_gpt()
    engine = Engine(m, max_batch=1)
    first = engine.submit([1, 2, 3], SamplingParams(max_tokens=30, temperature=0.0))
    second = engine.submit([7, 8], SamplingParams(max_tokens=5, temperature=0.0))
    engine.step()
    engine.step()
    assert engine.scheduler.running[0].prompt == [1, 2, 3] and len(engine.scheduler.waiting) == 1
    first.cancel()
    engine.step()  # the cancelled request leaves, the waiting one takes its slot in the same step
    assert first.result().finish_reason == "cancelled" and len(first.result().tokens) == 3  # prefill+2 steps
    assert [r.prompt for r in engine.scheduler.running] == [[7, 8]]
    while engine.step():
        pass
    assert second.result().tokens == _alone(m, [7, 8], SamplingParams(max_tokens=5, temperature=0.0)).tokens
    assert engine.scheduler.cache.n == 0


def test_background_thread_serves_concurrent_submitters():
    tok = byte_tokenizer()
    m = tiny_gpt(vocab_size=257)
    engine = Engine(m, tok, max_batch=2).start()
    params = SamplingParams(max_tokens=8, temperature=0.0)
    results: dict[int, str] = {}

    def client(i: int) -> None:
        results[i] = "".join(engine.submit(PROMPTS[i], params))  # iterate the text deltas

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    engine.stop()
    for i in range(4):
        assert results[i] == tok.decode(_alone(m, PROMPTS[i], params).tokens)


def test_stop_strings_and_stop_ids_end_the_text():
    tok = byte_tokenizer()
    m = tiny_gpt(vocab_size=257, block_size=64)
    base = SamplingParams(max_tokens=40, temperature=1.0, seed=3)
    free = Engine(m, tok).generate([[72, 105]], base)[0]
    assert free.text == tok.decode(free.tokens)
    stop = free.text[5:7]  # two characters somewhere in the middle
    cut = Engine(m, tok).generate(
        [[72, 105]], SamplingParams(max_tokens=40, temperature=1.0, seed=3, stop=(stop,))
    )[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.find(stop)]
    stop_id = free.tokens[4]
    by_id = generate(m, [72, 105], max_tokens=40, temperature=1.0, seed=3, stop_ids=[stop_id])
    assert by_id.tokens == free.tokens[: free.tokens.index(stop_id)] and by_id.finish_reason == "stop"


def test_bad_requests_are_refused_with_a_fix():
    m = tiny_gpt()
    engine = Engine(m)
    with pytest.raises(DataError, match="empty"):
        engine.submit([], SamplingParams())
    with pytest.raises(DataError, match="tokenizer"):
        engine.submit([1], SamplingParams(stop=("x",)))
    with pytest.raises(DataError, match="vocabulary"):
        engine.submit([1000], SamplingParams())
    with pytest.raises(DataError, match="top_p"):
        SamplingParams(top_p=0.0)


class _Exploding(dict):
    """A logit_bias that raises when the sampler reads it: a fault inside one engine step."""

    def items(self):
        raise RuntimeError("bias table unreadable")


def test_a_failing_step_fails_its_requests_and_the_engine_keeps_serving():
    m = tiny_gpt()
    engine = Engine(m, max_batch=4).start()
    try:
        bad = engine.submit([1, 2, 3], SamplingParams(max_tokens=5, logit_bias=_Exploding({7: 1.0})))
        with pytest.raises(PocketError, match="generation failed: RuntimeError: bias table unreadable"):
            bad.result(timeout=10)
        assert bad.error and bad.done
        params = SamplingParams(max_tokens=6, temperature=0.0)
        after = engine.submit([1, 2, 3], params).result(timeout=10)  # the same engine goes on
        assert after.tokens == _alone(m, [1, 2, 3], params).tokens and len(after.tokens) == 6
    finally:
        engine.stop()


def test_submit_never_waits_for_a_step():
    """A step holds the engine's lock for its whole length; submitting must not need that lock."""
    m = tiny_gpt()
    engine = Engine(m, max_batch=2)
    done = threading.Event()
    with engine._lock:  # as if a long step were running
        t = threading.Thread(target=lambda: (engine.submit([1, 2], SamplingParams(max_tokens=2)), done.set()))
        t.start()
        assert done.wait(5), "submit blocked on the stepping lock"
    t.join()
    assert engine.generate([[3, 4]], SamplingParams(max_tokens=2, temperature=0.0))[0].tokens


def test_stopping_the_engine_ends_its_unfinished_requests():
    m = tiny_gpt()
    engine = Engine(m, max_batch=1).start()
    with engine._lock:  # hold the loop between steps so the requests are still unfinished at stop()
        handles = [engine.submit([1, 2, 3], SamplingParams(max_tokens=40)) for _ in range(3)]
        stopper = threading.Thread(target=engine.stop)
        stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()
    for h in handles:
        assert h.done
        if h.error is not None:  # the ones the loop had not finished
            with pytest.raises(PocketError, match="the engine was stopped"):
                h.result(timeout=1)
    assert any(h.error for h in handles)
