"""Token ids -> text deltas that are always whole characters, with stop strings cut out.

Byte-level BPE splits a Chinese character (3 UTF-8 bytes) across tokens freely: decoding each token
on its own gives U+FFFD garbage. `TextStream` keeps the bytes and runs them through an incremental
UTF-8 decoder, which holds back an incomplete character until its last byte arrives; `flush` ends the
stream (a truly broken tail then becomes U+FFFD, exactly as a one-shot `bytes.decode(errors="replace")`).

Stop strings: text that might be the start of a stop string is held back too, so a partial stop
string is never emitted, even when it is split across tokens. When one appears, everything before it
is emitted and the stream reports it stopped. Knows nothing of models or sampling.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable


class TextStream:
    """Feed token ids with `push`; each call returns the new text that is safe to show."""

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Iterable[str] = ()) -> None:
        self.token_bytes = token_bytes
        self.stop = tuple(stop)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded, not yet emitted (could begin a stop string)
        self.text = ""  # everything emitted so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text delta now safe to emit ("" while bytes or a possible stop wait)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(self.token_bytes(token_id))
        return self._release(final=False)

    def flush(self) -> str:
        """End of stream: decode any leftover bytes and emit everything still held."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        cut = min((i for i in (self._pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:  # a whole stop string: emit what precedes it, then stop
            out, self.stopped = self._pending[:cut], True
            self._pending = ""
        else:
            hold = 0 if final else _held_suffix(self._pending, self.stop)
            out = self._pending[: len(self._pending) - hold]
            self._pending = self._pending[len(self._pending) - hold :]
        self.text += out
        return out


def _held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
