"""job.follow: the async bridge from an engine handle to a streaming route. Text queued before the
route reads goes out as one delta; streamed text equals the whole answer; a client that leaves
cancels the generation."""

from __future__ import annotations

import asyncio
import itertools

from pocketgpt.infer.engine import Engine
from pocketgpt.infer.sampling import SamplingParams
from pocketgpt.serve.job import follow
from tests.infer.helpers import byte_tokenizer, tiny_gpt


async def _never() -> bool:
    return False


def _collect(handle, disconnected=_never) -> list[str]:
    async def run() -> list[str]:
        return [d async for d in follow(handle, disconnected)]

    return asyncio.run(run())


def test_text_queued_before_the_read_goes_out_as_one_delta():
    engine = Engine(tiny_gpt(vocab_size=257), byte_tokenizer(), max_batch=1)
    handle = engine.submit([72, 105], SamplingParams(max_tokens=12, temperature=0.0))
    while engine.step():  # the whole answer is queued before anybody reads
        pass
    deltas = _collect(handle)
    assert deltas == [handle.result().text] and len(handle.result().tokens) == 12


def test_streamed_deltas_add_up_to_the_answer_from_a_running_engine():
    engine = Engine(tiny_gpt(vocab_size=257), byte_tokenizer(), max_batch=2).start()
    try:
        handle = engine.submit([72, 105], SamplingParams(max_tokens=40, temperature=0.0))
        deltas = _collect(handle)
        assert "".join(deltas) == handle.result().text and 1 <= len(deltas) <= 40
    finally:
        engine.stop()


def test_a_client_that_leaves_cancels_the_generation():
    engine = Engine(tiny_gpt(vocab_size=257, block_size=4096), byte_tokenizer(), max_batch=1).start()
    try:
        handle = engine.submit([72], SamplingParams(max_tokens=4000, temperature=0.0))

        async def gone() -> bool:
            return True

        async def run() -> None:
            async for _ in follow(handle, gone, check_every=0.0):
                pass

        asyncio.run(run())
        assert handle.result().finish_reason == "cancelled"
    finally:
        engine.stop()


def test_a_minimum_gap_spaces_the_chunks_and_loses_no_text():
    engine = Engine(tiny_gpt(vocab_size=257, block_size=512), byte_tokenizer(), max_batch=1).start()
    try:
        handle = engine.submit([72, 105], SamplingParams(max_tokens=300, temperature=0.0))

        async def run() -> list[tuple[float, str]]:
            loop = asyncio.get_running_loop()
            return [(loop.time(), d) async for d in follow(handle, _never, min_gap=lambda: 0.05)]

        timed = asyncio.run(run())
        assert "".join(d for _, d in timed) == handle.result().text
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(timed)]
        assert all(g >= 0.045 for g in gaps)  # never closer than the gap (timer resolution aside)
    finally:
        engine.stop()


def test_engine_load_counts_submitted_running_and_waiting_requests():
    engine = Engine(tiny_gpt(vocab_size=257), byte_tokenizer(), max_batch=1)
    assert engine.load == 0
    handles = [engine.submit([72], SamplingParams(max_tokens=3, temperature=0.0)) for _ in range(3)]
    assert engine.load == 3  # in the inbox, not yet seen by a step
    engine.step()
    assert engine.load == 3  # one running (one slot), two waiting
    while engine.step():
        pass
    assert engine.load == 0 and all(h.done for h in handles)
