"""The step thread policy: small models measure one thread against the caller's count per step size
and keep the faster; large models use the caller's count while the machine is calm; both use one
thread while it is busy (load average, with hysteresis); an explicit count always wins."""

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


def _policy() -> policy_mod.ThreadPolicy:
    policy = policy_mod.ThreadPolicy(tiny_gpt())  # small
    policy.adaptive = False  # the load plays no part here
    return policy


def _feed(policy: policy_mod.ThreadPolicy, rows: int, seconds: dict[int, float], steps: int) -> list[int]:
    """`steps` steps of `rows` rows, each taking seconds[count] on the count the policy set."""
    seen = []
    for _ in range(steps):
        policy.tick(rows)
        count = torch.get_num_threads()
        seen.append(count)
        policy.record(rows, seconds[count])
    return seen


def test_small_model_measures_both_counts_per_step_size_and_keeps_the_faster(two_threads):
    policy = _policy()
    with policy.setting():
        assert policy.candidates == (1, 2)
        trial = policy_mod.TRIAL_STEPS + 1  # one untimed step per count, then TRIAL_STEPS timed
        seen = _feed(policy, 1, {1: 2e-3, 2: 1e-3}, 2 * trial + 5)
        assert seen == [1] * trial + [2] * trial + [2] * 5  # one row: two threads measured faster
        seen = _feed(policy, 8, {1: 1e-3, 2: 3e-3}, 2 * trial + 5)
        assert seen[-5:] == [1] * 5  # eight rows: one thread faster here; one row keeps its choice
        assert _feed(policy, 1, {1: 2e-3, 2: 1e-3}, 3) == [2, 2, 2]
        assert _feed(policy, 6, {1: 1e-3, 2: 3e-3}, 1) == [1]  # 5-8 rows share the choice of 8
    assert torch.get_num_threads() == 2  # the caller's setting is back after the loop


def test_a_tie_goes_to_one_thread_and_the_median_ignores_a_stray_slow_step(two_threads):
    policy = _policy()
    with policy.setting():
        trial = policy_mod.TRIAL_STEPS + 1
        times = iter([1e-3] * trial + [1e-3] * (trial - 1) + [1.0])  # one descheduled step on two threads
        seen = []
        for _ in range(2 * trial + 2):
            policy.tick(1)
            seen.append(torch.get_num_threads())
            policy.record(1, next(times, 1e-3))
        assert seen[-2:] == [1, 1]


def test_steps_turning_much_slower_than_measured_start_a_new_measurement(two_threads, monkeypatch):
    policy = _policy()
    with policy.setting():
        trial = policy_mod.TRIAL_STEPS + 1
        _feed(policy, 1, {1: 2e-3, 2: 1e-3}, 2 * trial)
        assert policy.threads == 2
        # other work arrives: two-thread steps now take 10x the measured time, one thread 3x
        _feed(policy, 1, {1: 6e-3, 2: 1e-2}, policy_mod.SLOW_STEPS)
        seen = _feed(policy, 1, {1: 6e-3, 2: 1e-2}, 2 * trial + 3)
        assert seen[-3:] == [1, 1, 1]
        monkeypatch.setattr(policy_mod, "RETRIAL_EVERY", 10)  # and a choice is measured again in time
        seen = _feed(policy, 1, {1: 6e-3, 2: 1e-3}, 10 + 2 * trial + 3)
        assert seen[-3:] == [2, 2, 2]


def test_one_thread_callers_measure_nothing(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = _policy()
        with policy.setting():
            assert policy.candidates == (1,)
            assert set(_feed(policy, 1, {1: 1e-3}, 20)) == {1}
    finally:
        torch.set_num_threads(before)


def test_the_engine_records_its_decode_steps(two_threads):
    engine = Engine(tiny_gpt(), max_batch=1)
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=2 * policy_mod.TRIAL_STEPS + 4, temperature=0.0))
    trial = engine.scheduler.thread_policy.trials[policy_mod.size_class(1)]
    assert trial.choice in (1, 2)  # both counts were timed on real steps and one was chosen


def test_small_model_uses_one_thread_while_the_machine_is_busy(monkeypatch, two_threads):
    engine = Engine(tiny_gpt(), max_batch=1)
    assert _threads_during_steps(engine, [9.0, 9.0], monkeypatch) == [1, 1]


def test_explicit_counts_ignore_the_load_and_the_rows(monkeypatch, two_threads):
    monkeypatch.setattr(policy_mod, "SMALL_MODEL_PARAMS", 0)
    assert _threads_during_steps(Engine(tiny_gpt(), max_batch=1, threads=2), [9.0, 9.0], monkeypatch) == [
        2,
        2,
    ]
