"""Continuous batching: requests join and leave the running batch between decode steps.

A static batch waits for its slowest sequence; here every decode step feeds one token for each
running request, and between steps finished or cancelled requests leave and waiting ones join
(Yu et al. 2022, "Orca": iteration-level scheduling). The rows live in one `SlotKVCache`, each with
its own length, so a newcomer's prompt is prefilled into a free slot while the others keep going.

    step():  drop cancelled  ->  admit waiting (prefill, first token)  ->  one batched decode step

Each request keeps its own `SamplingParams`, generator, penalty counts and text stream. A prefill
computes logits for the last position only; decode steps take `fast_decode.FastDecoder` (one token per
row as plain tensor calls) when the model allows it, the module path otherwise; greedy rows share one
argmax and sampled rows share one batched `sample_rows`. The intra-op thread count comes from `threads.ThreadPolicy`. Single threaded by design:
`engine.py` adds the locks, the background loop and the handles.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from pocketgpt.infer.fast_decode import FastDecoder, unsupported
from pocketgpt.infer.sampling import SamplingParams, greedy_ids, penalise_rows, sample_rows
from pocketgpt.infer.stream import TextStream
from pocketgpt.infer.threads import ThreadPolicy

__all__ = ["Request", "Scheduler"]


@dataclass(eq=False)  # identity, not field-by-field: requests are looked up in lists
class Request:
    """One generation in flight: its prompt, settings, and everything it produced so far."""

    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[Request, str], None] = lambda req, delta: None  # new text (or "" on finish)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "cancelled" or "error" once done
    error: str | None = None  # why the engine failed this request
    cancelled: bool = False
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # (V,) bool: tokens in the prompt or output (repetition penalty)
    counts: torch.Tensor | None = None  # (V,) how often each token was generated (presence/frequency)
    last: int = -1  # the token to feed at the next decode step


class Scheduler:
    """Runs the requests of one model in the slots of one `SlotKVCache`."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch: int = 8,
        max_len: int | None = None,
        token_bytes: Callable[[int], bytes] | None = None,
        threads: int | None = None,
        fast: bool = True,
        packed: bool = False,
    ) -> None:
        """`fast=False` keeps every decode step on the module path (the reference the fast path is tested
        against). `packed`: the fast path keeps packed copies of large weights for several-row steps."""
        self.model = model
        self.thread_policy = ThreadPolicy(model, threads)
        self.max_len = min(max_len or model.config.block_size, model.config.block_size)
        self.cache = model.new_cache(max_batch, self.max_len, ragged=True)
        self.token_bytes = token_bytes
        self.device = model.tok_emb.weight.device
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # running[i] lives in cache slot i
        self.use_fast = fast
        self.pack_rows = max_batch if packed and max_batch > 1 else 0
        self.fast: FastDecoder | None = None
        self._refresh_fast()

    @property
    def threads(self) -> int | None:
        """Intra-op threads of the steps now (None: the caller's setting); see `threads.py`."""
        return self.thread_policy.threads

    def thread_setting(self) -> AbstractContextManager[None]:
        """Use the policy's intra-op threads inside the block (per calling thread), restoring the
        caller's afterwards. Wrap a whole loop of steps, not each step: switching costs."""
        return self.thread_policy.setting()

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, req: Request) -> None:
        """Prepare a request's sampling state and queue it (it joins at the next step with a free slot)."""
        self.prepare(req)
        self.waiting.append(req)

    def prepare(self, req: Request) -> None:
        """A request's own sampling state (generator, penalty counts, text stream); touches nothing
        shared, so any thread may call it."""
        p, V = req.params, self.model.config.vocab_size
        req.generator = torch.Generator(device=self.device)
        req.generator.manual_seed(p.seed) if p.seed is not None else req.generator.seed()
        if p.repetition_penalty != 1.0:
            req.seen = torch.zeros(V, dtype=torch.bool, device=self.device)
            req.seen[torch.tensor(req.prompt, device=self.device)] = True
        if p.presence_penalty or p.frequency_penalty:
            req.counts = torch.zeros(V, dtype=torch.long, device=self.device)
        if self.token_bytes is not None:
            req.stream = TextStream(self.token_bytes, p.stop)

    @torch.no_grad()
    def step(self) -> None:
        """Drop cancelled requests, admit waiting ones into free slots, then decode one token for all.
        (Run it inside `with scheduler.thread_setting():` to get the step's intra-op thread count.)"""
        self.thread_policy.tick(min(len(self.running) + len(self.waiting), self.cache.n_slots))
        for i in reversed(range(len(self.running))):
            if self.running[i].cancelled:
                self._finish(self.running[i], "cancelled")
        admit = []
        while self.waiting and len(self.running) + len(admit) < self.cache.n_slots:
            req = self.waiting.popleft()
            if req.cancelled or req.params.max_tokens == 0:
                self._done(req, "cancelled" if req.cancelled else "length")
            else:
                admit.append(req)
        if admit:
            self._admit(admit)
        if self.running:
            n, t0 = len(self.running), time.perf_counter()
            self._decode()
            if not admit:  # a prefill's cost would blur the comparison
                self.thread_policy.record(n, time.perf_counter() - t0)

    def _admit(self, reqs: list[Request]) -> None:
        """Prefill new requests into free slots, prompts of one length together in one forward (a
        burst of requests from one template costs one prefill, not one each), and pick their first
        tokens."""
        self._refresh_fast()
        by_len: dict[int, list[Request]] = {}
        for req in reqs:
            by_len.setdefault(len(req.prompt), []).append(req)
        for length, group in by_len.items():
            i, m = len(self.running), len(group)
            self.running += group
            self.cache.n = i + m
            idx = torch.tensor([r.prompt for r in group], device=self.device)  # (m, T)
            logits = self._last_logits(idx, self.cache.rows(i, m))  # (m, V)
            for j in range(m):
                self.cache.set_length(i + j, length)
            for req, token in zip(group, self._picks(group, logits), strict=True):
                self._emit(req, token)

    def _refresh_fast(self) -> None:
        """(Re)read the weights for the fast path when they changed since the last request (a policy
        trained between rollouts, a swapped-in adapter); drop it when the model no longer allows it."""
        if not self.use_fast or (self.fast is not None and not self.fast.stale()):
            return
        ok = unsupported(self.model) is None
        self.fast = None  # the old copies go before the new ones are made
        self.fast = FastDecoder(self.model, pack_rows=self.pack_rows) if ok else None

    def _decode(self) -> None:
        """One token for every running row, in one forward."""
        n = len(self.running)
        if self.fast is not None:
            logits = self.fast.step(
                torch.tensor([r.last for r in self.running], device=self.device), self.cache
            )
        elif n == 1:  # no mask, no scatter: the module path's batch-1 case
            row = self.cache.row(0)
            logits = self._last_logits(
                torch.tensor([[self.running[0].last]], device=self.device), row
            )  # (1, V)
            self.cache.set_length(0, row.pos)
        else:
            idx = torch.tensor([[r.last] for r in self.running], device=self.device)  # (n, 1)
            logits = self._last_logits(idx, self.cache)  # (n, V)
        running = list(self.running)  # _emit may finish a request, which reorders self.running
        for req, token in zip(running, self._picks(running, logits), strict=True):
            self._emit(req, token)

    def _picks(self, reqs: list[Request], logits: torch.Tensor) -> list[int]:
        """The next token of each request from its row of logits (n, V): the penalties of all
        penalised rows in one `penalise_rows` (each with its own history), then one argmax for all
        greedy rows and one batched `sample_rows` for the sampled ones."""
        pen = [i for i, r in enumerate(reqs) if r.params.penalised]
        if pen:
            logits = logits.float().clone()
            logits[pen] = penalise_rows(
                logits[pen],
                [reqs[i].params for i in pen],
                [reqs[i].seen for i in pen],
                [reqs[i].counts for i in pen],
            )
        greedy = [i for i, r in enumerate(reqs) if r.params.greedy]
        if len(greedy) == len(reqs):  # no row to gather
            return greedy_ids(logits).tolist()
        out = [0] * len(reqs)
        sampled = [i for i, r in enumerate(reqs) if not r.params.greedy]
        if greedy:
            for i, t in zip(greedy, greedy_ids(logits[greedy]).tolist(), strict=True):
                out[i] = t
        if sampled:
            tokens = sample_rows(
                logits[sampled], [reqs[i].params for i in sampled], [reqs[i].generator for i in sampled]
            )
            for i, t in zip(sampled, tokens, strict=True):
                out[i] = t
        return out

    def _last_logits(self, idx: torch.Tensor, cache) -> torch.Tensor:
        """idx (B, T) -> logits of the last position only (B, V): the prompt's other T-1 rows of the
        vocabulary projection are never sampled, and for GPT-2 that projection is its largest matmul."""
        h = self.model.hidden(idx, cache=cache)  # (B, T, C)
        return self.model.lm_head(h[:, -1])  # (B, V)

    def _emit(self, req: Request, token: int) -> None:
        """Record the request's next token and finish the request if it is done."""
        p = req.params
        if token in p.stop_ids:
            return self._finish(req, "stop")
        req.tokens.append(token)
        req.last = token
        if req.seen is not None:
            req.seen[token] = True
        if req.counts is not None:
            req.counts[token] += 1
        if req.stream is not None:
            delta = req.stream.push(token)
            if delta:
                req.on_event(req, delta)
            if req.stream.stopped:
                return self._finish(req, "stop")
        if len(req.tokens) >= p.max_tokens or self.cache.lens[self.running.index(req)] >= self.max_len:
            self._finish(req, "length")

    def _finish(self, req: Request, reason: str) -> None:
        """Free the request's slot (the last running row moves into it) and report it done."""
        i = self.running.index(req)
        last = len(self.running) - 1
        if i != last:
            self.cache.move(last, i)
            self.running[i] = self.running[last]
        self.running.pop()
        self.cache.n = len(self.running)
        self._done(req, reason)

    def fail_all(self, error: str) -> None:
        """A step raised: every running and waiting request ends as "error" with the cause, their
        slots are freed, and the scheduler is ready for new requests."""
        for req in [*self.running, *self.waiting]:
            req.error = error
            self._done(req, "error")
        self.running.clear()
        self.waiting.clear()
        self.cache.n = 0

    def _done(self, req: Request, reason: str) -> None:
        if req.stream is not None and reason not in ("cancelled", "error"):
            tail = req.stream.flush()
            if tail:
                req.on_event(req, tail)
        req.finish_reason = reason
        req.on_event(req, "")
