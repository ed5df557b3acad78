"""The step thread policy: small models on one thread for steps of few rows; large models, and small
ones stepping many rows, on the caller's count while the machine is calm and on one thread while it
is busy (load average, with hysteresis); an explicit count always wins."""

from __future__ import annotations

import pytest
import torch

from pocketgpt.infer import threads as policy_mod
from pocketgpt.infer.engine import Engine
from pocketgpt.infer.sampling import SamplingParams
from pocketgpt.infer.threads import machine_busy
from tests.infer.helpers import tiny_gpt


@pytest.mark.parametrize(
    "load,was_busy,want",
    [(2.5, False, False), (3.0, False, False), (3.1, False, True), (2.0, True, True), (1.4, True, False)],
)
def test_busy_above_cores_plus_one_and_calm_again_below_cores_minus_half(load, was_busy, want):
    assert machine_busy(load, 2, was_busy) is want


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_during_steps(engine: Engine, loads: list[float], monkeypatch, rows: int = 1) -> list[int]:
    """Step the engine (`rows` requests) once per load value (the load re-read at every step) and
    record the threads."""
    monkeypatch.setattr(policy_mod, "LOAD_CHECK_EVERY", 1)
    monkeypatch.setattr(policy_mod.os, "cpu_count", lambda: 2)
    for _ in range(rows):
        engine.submit([1, 2, 3], SamplingParams(max_tokens=len(loads) + 1, temperature=0.0))
    seen = []
    with engine.scheduler.thread_setting():
        for load in loads:
            monkeypatch.setattr(policy_mod, "load_average", lambda load=load: load)
            engine._step()  # takes the submitted requests in, then steps
            seen.append(torch.get_num_threads())
    return seen


def test_large_model_drops_to_one_thread_while_the_machine_is_busy(monkeypatch, two_threads):
    monkeypatch.setattr(policy_mod, "SMALL_MODEL_PARAMS", 0)  # the tiny model counts as large here
    engine = Engine(tiny_gpt(), max_batch=1)
    assert engine.scheduler.thread_policy.adaptive
    seen = _threads_during_steps(engine, [0.5, 9.0, 2.0, 1.0, 1.0], monkeypatch)
    assert seen == [2, 1, 1, 2, 2]
    assert torch.get_num_threads() == 2  # the caller's setting is back after the loop


def test_small_model_steps_few_rows_on_one_thread_and_many_like_a_large_model(monkeypatch, two_threads):
    rows = policy_mod.SMALL_MODEL_ROWS
    assert _threads_during_steps(Engine(tiny_gpt(), max_batch=1), [0.5, 9.0], monkeypatch) == [1, 1]
    few = Engine(tiny_gpt(), max_batch=rows - 1)
    assert _threads_during_steps(few, [0.5, 0.5], monkeypatch, rows=rows - 1) == [1, 1]
    many = Engine(tiny_gpt(), max_batch=rows)
    assert _threads_during_steps(many, [0.5, 9.0, 1.0], monkeypatch, rows=rows) == [2, 1, 2]
    assert torch.get_num_threads() == 2


def test_explicit_counts_ignore_the_load_and_the_rows(monkeypatch, two_threads):
    monkeypatch.setattr(policy_mod, "SMALL_MODEL_PARAMS", 0)
    assert _threads_during_steps(Engine(tiny_gpt(), max_batch=1, threads=2), [9.0, 9.0], monkeypatch) == [
        2,
        2,
    ]
