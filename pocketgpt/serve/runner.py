"""Loaded models for the server: one Engine per store model, loaded on first use, unloaded after keep_alive.

    runner = Runner(store)
    with runner.use("tiny", keep_alive="5m") as slot:   # loads (materialize -> load_model) if needed
        handle = slot.engine.submit(ids, slot.loaded.sampling(options, len(ids)))
    runner.loaded()                                    # what /api/ps lists
    runner.unload("tiny"); runner.close()

keep_alive follows Ollama: a number of seconds or a duration string ("10s", "5m", "1h", "1h30m");
0 unloads as soon as the request ends, a negative value keeps the model forever; default 5 minutes.
A model is never unloaded while a request is using it. Every engine runs its own background
stepping thread (`Engine.start()`), so all requests of a model share its continuous batch.
Also here: `embed`, the embedding of texts with a loaded model. Knows nothing of HTTP or of single
requests: job.py leases a Slot for one generation; the routes call `use`/`acquire` through it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pocketgpt.errors import PocketError
from pocketgpt.serve.loaded import LoadedModel, load_store_model
from pocketgpt.serve.store import Store, full_name

DEFAULT_KEEP_ALIVE = 300.0
DEFAULT_STREAM_INTERVAL = 0.01  # seconds between chunks of a stream while a model serves several
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any, default: float = DEFAULT_KEEP_ALIVE) -> float:
    """Ollama's keep_alive -> seconds (inf = forever). None -> `default`."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise PocketError('keep_alive must be a duration like "5m" or a number of seconds, not a boolean')
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = re.findall(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise PocketError(
                    f'keep_alive {value!r} is not a duration; use e.g. "30s", "5m", "1h", '
                    "0 (unload now) or -1 (keep loaded)"
                ) from None
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        raise PocketError("keep_alive must be a duration string or a number of seconds")
    return float("inf") if seconds < 0 else seconds


@dataclass
class Slot:
    """One loaded model: its weights/tokenizer/template, its running Engine, and its lease."""

    name: str
    loaded: LoadedModel
    engine: Any  # pocketgpt.infer.engine.Engine, started
    load_seconds: float
    keep_alive: float = DEFAULT_KEEP_ALIVE
    expires: float = float("inf")  # time.monotonic() deadline once idle
    users: int = 0
    size: int = 0
    json_vocab: Any = None  # serve/json_mode.JsonVocab, built on the first format=json request

    def expires_at(self) -> str:
        """The unload time as ISO 8601 (far future when kept forever or in use)."""
        if self.users or self.expires == float("inf"):
            return "9999-12-31T23:59:59Z"
        wall = time.time() + (self.expires - time.monotonic())
        return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


def settle_gc() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (`gc.freeze`).

    A server process holds ~200k long-lived objects (FastAPI, pydantic, torch, a loaded model) that
    are never garbage, and a full collection scans them all: ~115 ms here, a pause that stalls every
    stream at once and made the TTFT p99 ~4x its p50 under load. Frozen objects are still freed by
    reference counting; only a reference cycle among them would now be kept."""
    import gc

    gc.collect()
    gc.freeze()


class Runner:
    """The server's loaded models, keyed by full name ("tiny:latest")."""

    def __init__(
        self,
        store: Store,
        *,
        device: str = "cpu",
        max_batch: int = 16,
        default_keep_alive: float = DEFAULT_KEEP_ALIVE,
        stream_interval: float = DEFAULT_STREAM_INTERVAL,
    ) -> None:
        """`stream_interval` (seconds): while a model's engine runs more than one request, each
        stream sends at most one chunk per interval (all its new text); a lone stream sends every
        token as it comes. See `job.follow`."""
        self.store, self.device, self.max_batch = store, device, max_batch
        self.stream_interval = stream_interval
        self.default_keep_alive = default_keep_alive
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()  # guards _slots
        self._loading: dict[str, threading.Lock] = {}  # one loader per model; others wait for it
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="pocketgpt-unloader", daemon=True)
        self._reaper.start()

    @contextlib.contextmanager
    def use(self, name: str, keep_alive: Any = None) -> Iterator[Slot]:
        """Hold `name` loaded for the duration of the block; its keep_alive clock starts at the end."""
        slot = self.acquire(name, parse_keep_alive(keep_alive, self.default_keep_alive))
        try:
            yield slot
        finally:
            self.release(slot)

    def acquire(self, name: str, keep_alive: float | None = None) -> Slot:
        """Load (once) and mark in use; pair with `release`. `keep_alive` (seconds) becomes the model's:
        as in Ollama, the latest request decides how long the model stays once idle (so a keep_alive=0
        request, e.g. `pocketgpt stop`, unloads it as soon as the requests before it are done)."""
        key = full_name(name)
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                slot = self._slots.get(key)
                if slot is not None:
                    return self._enter(slot, keep_alive)
            slot = self._load(key)  # outside the lock: other models keep serving meanwhile
            with self._lock:
                self._slots[key] = slot
                return self._enter(slot, keep_alive)

    def _enter(self, slot: Slot, keep_alive: float | None) -> Slot:
        slot.users += 1
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        return slot

    def release(self, slot: Slot) -> None:
        """End one use; the keep_alive clock starts when the last user is done."""
        with self._lock:
            slot.users -= 1
            slot.expires = time.monotonic() + slot.keep_alive
            idle_now = slot.users == 0 and slot.keep_alive == 0
        if idle_now:
            self.unload(slot.name)

    def load(self, name: str, keep_alive: Any = None) -> Slot:
        """Load without generating (Ollama: a request with an empty prompt)."""
        with self.use(name, keep_alive) as slot:
            return slot

    def _load(self, key: str) -> Slot:
        from pocketgpt.infer.engine import Engine
        from pocketgpt.infer.threads import is_small

        t0 = time.perf_counter()
        loaded = load_store_model(self.store, key, device=self.device)
        # The HTTP loop shares the cores with the engine: a small model steps on one thread even with
        # many rows (on two, 8 streaming clients got 1.6x one client's tokens/s instead of 2.6-3.0x).
        threads = 1 if is_small(loaded.model) else None
        engine = Engine(
            loaded.model, loaded.tokenizer, max_batch=self.max_batch, max_len=loaded.context, threads=threads
        ).start()
        size = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) + engine.copies_bytes
        settle_gc()
        return Slot(
            key, loaded, engine, time.perf_counter() - t0, keep_alive=self.default_keep_alive, size=size
        )

    def unload(self, name: str) -> bool:
        """Stop and drop `name` if loaded and idle; True if it was unloaded."""
        key = full_name(name)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.users:
                return False
            del self._slots[key]
        slot.engine.stop()
        return True

    def loaded(self) -> list[Slot]:
        with self._lock:
            return list(self._slots.values())

    def _reap(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for slot in self.loaded():
                if not slot.users and slot.expires <= now:
                    self.unload(slot.name)

    def close(self) -> None:
        """Stop the unloader and every engine (server shutdown)."""
        self._stop.set()
        for slot in self.loaded():
            with self._lock:
                self._slots.pop(slot.name, None)
            slot.engine.stop()


def embed(slot: Slot, texts: list[str], truncate: bool = True) -> tuple[list[list[float]], int]:
    """Mean-pooled final hidden states, L2-normalised: one vector per text; also the token count."""
    import torch

    tok, model = slot.loaded.tokenizer, slot.loaded.model
    limit = slot.loaded.context
    out, n_tokens = [], 0
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text) or [0]
            if len(ids) > limit:
                if not truncate:
                    raise PocketError(
                        f"input of {len(ids)} tokens exceeds the context ({limit}); "
                        "shorten it or set truncate: true"
                    )
                ids = ids[:limit]
            n_tokens += len(ids)
            h = model.hidden(torch.tensor([ids], device=slot.engine.scheduler.device))  # (1, T, C)
            v = torch.nn.functional.normalize(h[0].float().mean(dim=0), dim=0)  # (C,)
            out.append(v.tolist())
    return out, n_tokens


# Ollama options we accept and ignore (they tune llama.cpp, which pocketgpt does not use)
