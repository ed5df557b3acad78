"""One generation request in flight: prompt -> SamplingParams -> the model's engine -> text deltas.

    job = start_job(runner, "tiny", messages=[...], options={"temperature": 0}, json_mode=False)
    async for delta in job.deltas(request.is_disconnected): ...     # cancels if the client leaves
    job.ollama_stats()                                              # eval_count, durations in ns, ...

`start_job` leases the model from the Runner (loading it if needed), builds the prompt ids (chat
messages through the template, or a raw prompt), maps the options onto SamplingParams (refusing
values that would overflow the sampler), adds the JSON-mode mask, and submits. `Job` follows the
engine's handle for the routes and ends the lease when the answer ends. Knows nothing of HTTP shapes:
api_ollama.py and api_openai.py turn a Job into their own JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pocketgpt.errors import PocketError
from pocketgpt.serve.http import ApiError
from pocketgpt.serve.runner import Runner, Slot, parse_keep_alive

IGNORED_OPTIONS = {
    "num_keep",
    "typical_p",
    "repeat_last_n",
    "tfs_z",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
    "numa",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "num_thread",
}


@dataclass
class Job:
    """One generation request in flight: its slot lease, engine handle and timings (perf_counter)."""

    runner: Runner
    slot: Slot
    handle: Any
    prompt_tokens: int
    t_start: float
    t_loaded: float
    t_first: float | None = None
    t_end: float | None = None
    _released: bool = False

    def finish(self) -> None:
        """End the lease (idempotent); cancels the generation if it is still running."""
        if self.t_end is None:
            self.t_end = time.perf_counter()
        if not self.handle.done:
            self.handle.cancel()
        if not self._released:
            self._released = True
            self.runner.release(self.slot)

    async def deltas(self, disconnected: Any) -> Any:
        """The text deltas as they come; the lease ends when they do (or the client leaves). Raises
        ApiError (500) at the end if the engine failed the generation."""
        try:
            engine, interval = self.slot.engine, self.runner.stream_interval
            gap = lambda: interval if engine.load > 1 else 0.0  # noqa: E731 (a lone stream: every token)
            async for d in follow(self.handle, disconnected, min_gap=gap):
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                yield d
        finally:
            self.finish()
        if self.handle.error is not None:
            raise ApiError(500, f"generation failed in the engine: {self.handle.error}")

    @property
    def eval_count(self) -> int:
        return len(self.handle.tokens)

    @property
    def finish_reason(self) -> str:
        if not self.handle.done:
            return "length"
        return "error" if self.handle.error is not None else self.handle.result(timeout=0).finish_reason

    def ollama_stats(self) -> dict[str, int]:
        """Ollama's statistics: counts and durations in nanoseconds."""
        end = self.t_end or time.perf_counter()
        first = self.t_first or end
        ns = lambda s: max(int(s * 1e9), 0)  # noqa: E731
        return {
            "total_duration": ns(end - self.t_start),
            "load_duration": ns(self.t_loaded - self.t_start),
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": ns(first - self.t_loaded),
            "eval_count": self.eval_count,
            "eval_duration": ns(end - first),
        }


def start_job(
    runner: Runner,
    name: str,
    *,
    messages: list[dict[str, str]] | None = None,
    prompt: str | None = None,
    system: str | None = None,
    template: str | None = None,
    options: dict[str, Any] | None = None,
    keep_alive: Any = None,
    json_mode: bool = False,
    logit_bias: dict[int, float] | None = None,
) -> Job:
    """Load `name` if needed, build the prompt (chat `messages` through the template, or a raw
    `prompt`), map the options onto SamplingParams and submit to the model's engine."""
    t0 = time.perf_counter()
    ttl = parse_keep_alive(keep_alive, runner.default_keep_alive)
    options = {k: v for k, v in (options or {}).items() if k not in IGNORED_OPTIONS and v is not None}
    slot = runner.acquire(name, ttl)
    try:
        loaded = slot.loaded
        if template is not None:
            from dataclasses import replace

            from pocketgpt.serve.template import chat_template

            loaded = replace(loaded, template=chat_template(template, loaded.tokenizer))
        if messages is not None:
            ids = loaded.prompt_ids(messages, system)
        else:
            ids = loaded.tokenizer.encode(prompt or "") or [_start_id(loaded.tokenizer)]
        if len(ids) >= loaded.context:
            raise PocketError(
                f"the prompt has {len(ids)} tokens but {name}'s context is {loaded.context}; "
                "shorten the prompt or the conversation"
            )
        params = keep_finite(loaded.sampling(options, prompt_len=len(ids)))
        if logit_bias:
            params.logit_bias = dict(logit_bias)
        mask = _json_mask(slot, params) if json_mode else None
        t_loaded = time.perf_counter()
        handle = slot.engine.submit(ids, params)
        if mask is not None:
            mask.attach(handle)
    except BaseException:
        runner.release(slot)
        raise
    return Job(runner, slot, handle, len(ids), t0, t_loaded)


MIN_TEMPERATURE = 1e-3  # below this, sampling is greedy in all but name, and logits / T overflow float32
PENALTY_RANGE = 100.0  # |presence|, |frequency| <= 100 and repeat_penalty in [1/100, 100]


def keep_finite(params: Any) -> Any:
    """Refuse (or, for a vanishing temperature, round to greedy) settings whose arithmetic would leave
    float32 in the sampler: an inf or NaN logit there would fail the engine's step for every request
    of the model, so a client must not be able to send one. The limits are far past useful values."""
    if 0 < params.temperature < MIN_TEMPERATURE:
        params.temperature = 0.0
    r = params.repetition_penalty
    if not 1 / PENALTY_RANGE <= r <= PENALTY_RANGE:
        raise PocketError(f"repeat_penalty {r:g} is out of range; give a number in [0.01, 100] (1 = off)")
    for name in ("presence_penalty", "frequency_penalty"):
        if abs(getattr(params, name)) > PENALTY_RANGE:
            raise PocketError(
                f"{name} {getattr(params, name):g} is out of range; give a number in [-100, 100]"
            )
    if params.seed is not None and not -(2**63) <= params.seed < 2**64:
        raise PocketError(f"seed {params.seed} does not fit in 64 bits; give a smaller integer")
    return params


def _json_mask(slot: Slot, params: Any) -> Any:
    """Constrain `params` to one valid JSON object (serve/json_mode.py); <|endoftext|> ends it too."""
    from pocketgpt.serve.json_mode import JsonBias, JsonVocab

    if slot.json_vocab is None:  # built once per loaded model
        slot.json_vocab = JsonVocab(slot.loaded.tokenizer, slot.loaded.model.config.vocab_size)
    params.stop_ids = tuple(dict.fromkeys([*params.stop_ids, _start_id(slot.loaded.tokenizer)]))
    params.logit_bias = JsonBias(slot.json_vocab, params, base=params.logit_bias)
    return params.logit_bias


def _start_id(tokenizer: Any) -> int:
    return tokenizer.special_tokens.get("<|endoftext|>", 0)


async def follow(
    handle: Any, disconnected: Any, check_every: float = 0.1, min_gap: Any = lambda: 0.0
) -> Any:
    """Async-iterate a RequestHandle's text deltas without a thread per request and without polling:
    the engine's thread wakes this coroutine (`handle.notify` -> `call_soon_threadsafe`) when text is
    ready, and each wake yields all the text queued by then as one delta (a busy server sends fewer,
    larger chunks instead of falling behind one token per chunk). Cancels the generation when the
    consumer stops iterating (a streaming response whose client left) or when `await disconnected()`
    turns true, asked every `check_every` seconds (a whole-answer request whose client gave up:
    nothing is being sent, so only asking notices).

    `min_gap()` (seconds) spaces a stream's chunks: after one chunk the next waits until that much
    time has passed, and carries every token made meanwhile. Each chunk costs the server a JSON
    line, an HTTP write and a wake-up of its event loop, on the same GIL and cores as the engine's
    steps; when many streams share the engine, fewer, larger chunks leave it more of both. The first
    chunk and the end are never held back beyond the gap."""
    import asyncio

    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    pending = False  # a wake-up is on its way to the loop: later tokens ride on it

    def woken() -> None:  # the loop's thread
        nonlocal pending
        pending = False  # first: a token queued after this line schedules a new wake-up
        ready.set()

    def wake() -> None:  # engine thread
        nonlocal pending
        if pending:
            return
        pending = True
        try:
            loop.call_soon_threadsafe(woken)
        except RuntimeError:  # the loop closed (server shutting down): nobody is waiting any more
            pass

    def tick() -> None:  # the disconnect check is due
        nonlocal timer
        timer = None
        ready.set()

    handle.notify(wake)
    next_check = time.monotonic() + check_every
    timer: Any = None  # one pending wake-up for the next check, not a new one per token
    try:
        while True:
            ready.clear()  # before reading, so text that lands after the read wakes the next wait
            done = handle.done
            text = "".join(handle.ready())
            if text:
                yield text
                sent = time.monotonic()
            if done:
                return
            if text and (gap := min_gap()) > 0:
                await asyncio.sleep(max(sent + gap - time.monotonic(), 0.0))
                continue
            if time.monotonic() >= next_check:
                if await disconnected():
                    return
                next_check = time.monotonic() + check_every
            if timer is None:
                timer = loop.call_later(max(next_check - time.monotonic(), 0.0), tick)
            await ready.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if not handle.done:
            handle.cancel()
