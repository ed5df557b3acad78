"""The one engine every user of a model generates through: CLI, server, PPO rollouts, evaluation.

    engine = Engine(model, tokenizer)
    handle = engine.submit(prompt_ids, SamplingParams(max_tokens=50, stop=("\\n\\n",)))
    for delta in handle: print(delta, end="")        # text deltas, whole characters only
    handle.result()                                  # -> Completion(tokens, text, finish_reason)

`submit` is thread-safe and never waits for a step: it drops the request into an inbox that the
stepping thread empties before each step, and returns a `RequestHandle` at once. The work happens in
`step()` (see `scheduler.py`), run either by a background thread (`start()`, what a server wants) or
by the caller (`generate()` drives the steps itself when no thread runs). `cancel()` on a handle
frees its slot at the next step. A step that raises fails the requests it was running (their
`result()` raises `EngineError` with the cause) and the engine goes on serving the others.
Knows nothing of HTTP or command lines.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from pocketgpt.errors import DataError, PocketError
from pocketgpt.infer.sampling import SamplingParams
from pocketgpt.infer.scheduler import Request, Scheduler


@dataclass
class Completion:
    """What a generation produced: the new token ids, their text (with a tokenizer), and why it
    stopped ("stop", "length" or "cancelled")."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_tokens: int = 0
    text: str = ""


class EngineError(PocketError):
    """A request failed inside the engine (its step raised); the message names the cause."""


class RequestHandle:
    """The caller's side of one request: iterate it for text deltas; `cancel()`; `result()`."""

    def __init__(self, req: Request) -> None:
        self._req = req
        self._deltas: queue.Queue[str | None] = queue.Queue()
        self._done = threading.Event()
        self._text: list[str] = []
        self._notify: Callable[[], None] | None = None

    def _on_event(self, req: Request, delta: str) -> None:  # called by the engine's stepping thread
        if delta:
            self._text.append(delta)
            self._deltas.put(delta)
        if req.finish_reason is not None:
            self._done.set()
            self._deltas.put(None)
        if self._notify is not None and (delta or req.finish_reason is not None):
            self._notify()

    def notify(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from the engine's thread, so it must be quick and thread-safe) whenever
        new text is queued or the request ends: a consumer can wait for that instead of polling.
        Text queued before this call is not announced; read `ready()` once after registering."""
        self._notify = callback

    def __iter__(self) -> Iterator[str]:
        while (delta := self._deltas.get()) is not None:
            yield delta

    def ready(self) -> list[str]:
        """The text deltas queued so far, without waiting (for a caller that steps the engine itself)."""
        out = []
        while not self._deltas.empty():
            delta = self._deltas.get_nowait()
            if delta is None:  # the end marker stays for anyone iterating later
                self._deltas.put(None)
                break
            out.append(delta)
        return out

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step and the handle finishes as "cancelled"."""
        self._req.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def tokens(self) -> list[int]:
        return list(self._req.tokens)

    @property
    def error(self) -> str | None:
        """Why the request failed inside the engine, or None."""
        return self._req.error

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the request to finish and return what it produced; raises `EngineError` if its
        generation failed."""
        if not self._done.wait(timeout):
            raise TimeoutError("the request did not finish in time; is the engine stepping (engine.start())?")
        r = self._req
        if r.error is not None:
            raise EngineError(f"generation failed: {r.error}")
        return Completion(list(r.tokens), r.finish_reason or "length", len(r.prompt), "".join(self._text))


class Engine:
    """Continuous-batching generation over one model (and optionally its tokenizer, for text)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer=None,
        *,
        max_batch: int = 8,
        max_len: int | None = None,
        threads: int | None = None,
        fast: bool = True,
        packed: bool | None = None,
    ) -> None:
        """`max_batch` slots of `max_len` positions (default block_size) are allocated once, here.
        `threads`: intra-op threads per step (default: 1 for small CPU models, else torch's).
        `fast=False` decodes through the model's modules instead of `fast_decode` (the reference).
        `packed`: keep a second copy of a large model's weights in the layout that decodes several
        rows fastest (1.7x faster products at 8 rows, twice the weights' memory); default: when
        `max_batch` > 1."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.scheduler = Scheduler(
            model,
            max_batch=max_batch,
            max_len=max_len,
            threads=threads,
            fast=fast,
            packed=max_batch > 1 if packed is None else packed,
            token_bytes=tokenizer.token_bytes if tokenizer is not None else None,
        )
        self._lock = threading.Lock()  # one step at a time (a background loop and callers of step())
        self._inbox: queue.SimpleQueue[Request] = queue.SimpleQueue()  # submitted, not yet seen by a step
        self._wake = threading.Event()  # set by submit and stop: the idle loop looks again
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def copies_bytes(self) -> int:
        """Memory the decode fast path holds in weight copies (packed or transposed), beyond the model's."""
        fast = self.scheduler.fast
        return 0 if fast is None else fast.copies_bytes

    @property
    def load(self) -> int:
        """Requests submitted and not finished (running, waiting or not yet seen by a step). Read
        without the lock: a moment's count, for heuristics such as the server's stream spacing."""
        return self._inbox.qsize() + len(self.scheduler.running) + len(self.scheduler.waiting)

    # -- submitting --------------------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], params: SamplingParams | None = None) -> RequestHandle:
        """Queue `prompt` (token ids) for generation; returns immediately with its handle."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt]
        self._check(prompt, params)
        req = Request(prompt, params)
        handle = RequestHandle(req)
        req.on_event = handle._on_event
        self.scheduler.prepare(req)  # the request's own state only: no lock needed
        self._inbox.put(req)
        self._wake.set()
        return handle

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        V, max_len = self.model.config.vocab_size, self.scheduler.max_len
        if not prompt:
            raise DataError(
                "the prompt is empty; give at least one token (e.g. <|endoftext|> to start fresh)"
            )
        if len(prompt) >= max_len:
            raise DataError(
                f"the prompt has {len(prompt)} tokens but the context is {max_len}; shorten the prompt"
            )
        if not all(0 <= t < V for t in [*prompt, *params.logit_bias]):
            raise DataError(f"token ids must be in [0, {V}) for this model's vocabulary")
        if params.stop and self.tokenizer is None:
            raise DataError("stop strings need text: build the Engine with the model's tokenizer")

    # -- stepping ----------------------------------------------------------------------------------
    def _has_work(self) -> bool:
        return not self._inbox.empty() or self.scheduler.has_work()

    def _drain(self) -> None:
        """(Lock held.) Move submitted requests into the scheduler's queue."""
        while not self._inbox.empty():
            self.scheduler.waiting.append(self._inbox.get_nowait())

    def _step(self) -> None:
        """(Lock held.) Take in submitted requests, then one step; a step that raises fails the
        requests it touched, not the engine."""
        self._drain()
        try:
            self.scheduler.step()
        except Exception as e:  # noqa: BLE001 - any failure: report it to the requests, keep serving
            self.scheduler.fail_all(f"{type(e).__name__}: {e}")

    def step(self) -> bool:
        """One scheduler step (admit, decode one token per running request); False when idle."""
        with self._lock, self.scheduler.thread_setting():
            if not self._has_work():
                return False
            self._step()
            return True

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams | None = None
    ) -> list[Completion]:
        """Generate for every prompt (different lengths welcome) and wait; batched by the scheduler."""
        handles = [self.submit(p, params) for p in prompts]
        if self._thread is None:
            with self.scheduler.thread_setting():
                while not all(h.done for h in handles):
                    with self._lock:  # per step, so other threads may step in between
                        if not self._has_work():
                            break
                        self._step()
        return [h.result() for h in handles]

    def start(self) -> Engine:
        """Run `step()` in a background thread until `stop()`; submitters just iterate their handles."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="pocketgpt-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the background loop. Requests it had not finished end as "error" ("the engine was
        stopped"), so nobody waits on them forever."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            with self._lock:
                self._drain()
                if self.scheduler.has_work():
                    self.scheduler.fail_all("the engine was stopped before this request finished")

    def _loop(self) -> None:
        with self.scheduler.thread_setting():  # per thread: set once for the loop's whole life
            self._serve()

    def _serve(self) -> None:
        while not self._stopping:
            if not self._has_work():
                self._wake.wait()
                self._wake.clear()  # a submit after this finds the inbox non-empty at the next look
                continue
            with self._lock:
                self._step()
