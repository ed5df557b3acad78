"""`format: "json"` (Ollama) and `response_format: {"type": "json_object"}` (OpenAI): decoding that can
only write one valid JSON object.

    vocab = JsonVocab(tokenizer)                       # each token's bytes, once per model
    bias = JsonBias(vocab, params)                     # params.logit_bias = bias; then engine.submit
    bias.attach(handle)                                # it follows the request's tokens from here

A byte-level automaton reads JSON text (RFC 8259): objects, arrays, strings (escapes, whole UTF-8
characters), numbers, true/false/null; whitespace where JSON allows it, at most 32 bytes in a row
(enough to pretty-print, too little to stall), none before the opening `{`.
Before every token the request picks, each vocabulary token is run through the automaton from the
current state; a token that would break the grammar gets -inf. The object is also closed in time:
`cost(state)` is the fewest bytes that still finish it (a `"`, a `0`, the closing brackets), and a
token is allowed only if that many tokens remain of the request's max_tokens after it (every ASCII
byte is a token of its own in a byte-level BPE). Once the object is complete only the stop tokens
are left, so the answer ends there. (A request with max_tokens < 2 cannot hold `{}`: it gets a prefix.)

How it plugs into the engine: the scheduler has no per-request logits hook yet, so the mask rides on
`SamplingParams.logit_bias`, which the scheduler adds to the logits before every pick
(`sampling.apply_penalties`): `JsonBias` is that mapping, recomputed from the tokens the request has
produced so far. Cost: one automaton walk per vocabulary token per step, cached per state (fine for
small vocabularies; a 50k vocabulary pays milliseconds per token). Knows nothing of HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch

# Modes of the automaton. A state is (mode, stack, aux): `stack` holds the open containers ("o" object,
# "a" array), innermost last; `aux` is the mode's detail (see `step`).
START, VALUE, ARR_FIRST, OBJ_FIRST, KEY, STR, COLON, AFTER, NUM, LIT, DONE = range(11)
# number sub-states: after "-", after a leading "0", integer digits, after ".", fraction digits,
# after "e", after the exponent's sign, exponent digits
SIGN, ZERO, INT, DOT, FRAC, EXP_E, EXP_SIGN, EXP = range(8)
NUM_ENDS = {ZERO, INT, FRAC, EXP}  # a number may stop here
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrtu')
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}
WHITESPACE = frozenset(b" \n\r\t")
MAX_WHITESPACE = 32  # in a row: room for pretty-printing, none for an endless run of blanks
# UTF-8 lead bytes whose first continuation byte has a narrower range (no overlong forms, no
# surrogates, nothing past U+10FFFF); every other continuation byte is 0x80-0xBF
FIRST_CONTINUATION = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}

State = tuple[int, str, Any]
INITIAL: State = (START, "", 0)


def step(state: State, b: int) -> State | None:
    """The state after byte `b`, or None if `b` cannot continue valid JSON."""
    mode, stack, aux = state
    if mode == START:
        return (OBJ_FIRST, "o", 0) if b == ord("{") else None
    if mode in (VALUE, ARR_FIRST, OBJ_FIRST, KEY, COLON, AFTER) and b in WHITESPACE:
        return (mode, stack, aux + 1) if aux < MAX_WHITESPACE else None  # aux: whitespace so far
    if mode in (VALUE, ARR_FIRST):
        if mode == ARR_FIRST and b == ord("]"):
            return _close(stack)
        return _begin_value(stack, b)
    if mode in (OBJ_FIRST, KEY):
        if b == ord('"'):
            return (STR, stack, (True, 0, 0, 0, 0))
        return _close(stack) if mode == OBJ_FIRST and b == ord("}") else None
    if mode == STR:
        return _in_string(stack, aux, b)
    if mode == COLON:
        return (VALUE, stack, 0) if b == ord(":") else None
    if mode == AFTER:
        if b == ord(","):
            return (KEY, stack, 0) if stack[-1] == "o" else (VALUE, stack, 0)
        if b == (ord("}") if stack[-1] == "o" else ord("]")):
            return _close(stack)
        return None
    if mode == NUM:
        nxt = _in_number(aux, b)
        if nxt is not None:
            return (NUM, stack, nxt)
        return step((AFTER, stack, 0), b) if aux in NUM_ENDS else None
    if mode == LIT:  # aux: the literal's bytes still to come
        if b != aux[0]:
            return None
        return (LIT, stack, aux[1:]) if len(aux) > 1 else (AFTER, stack, 0)
    return None  # DONE: nothing may follow the object


def _begin_value(stack: str, b: int) -> State | None:
    if b == ord("{"):
        return (OBJ_FIRST, stack + "o", 0)
    if b == ord("["):
        return (ARR_FIRST, stack + "a", 0)
    if b == ord('"'):
        return (STR, stack, (False, 0, 0, 0, 0))
    if b == ord("-"):
        return (NUM, stack, SIGN)
    if b in DIGITS:
        return (NUM, stack, ZERO if b == ord("0") else INT)
    if b in LITERALS:
        return (LIT, stack, LITERALS[b])
    return None


def _close(stack: str) -> State:
    rest = stack[:-1]
    return (AFTER, rest, 0) if rest else (DONE, "", 0)


def _in_string(stack: str, aux: tuple[bool, int, int, int, int], b: int) -> State | None:
    """aux = (is_key, after_backslash, hex digits left of a \\uXXXX, UTF-8 continuation bytes left,
    the lead byte while its first continuation is due: it narrows that byte's range, RFC 3629)."""
    is_key, esc, hex_left, cont, lead = aux
    if cont:
        lo, hi = FIRST_CONTINUATION.get(lead, (0x80, 0xBF))
        return (STR, stack, (is_key, 0, 0, cont - 1, 0)) if lo <= b <= hi else None
    if hex_left:
        return (STR, stack, (is_key, 0, hex_left - 1, 0, 0)) if b in HEX else None
    if esc:
        if b not in ESCAPES:
            return None
        return (STR, stack, (is_key, 0, 4 if b == ord("u") else 0, 0, 0))
    if b == ord('"'):
        return (COLON, stack, 0) if is_key else (AFTER, stack, 0) if stack else None
    if b == ord("\\"):
        return (STR, stack, (is_key, 1, 0, 0, 0))
    if b < 0x20:  # control characters must be escaped
        return None
    if b < 0x80:
        return (STR, stack, aux)
    n = 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF else 3 if 0xF0 <= b <= 0xF4 else -1
    return (STR, stack, (is_key, 0, 0, n, b)) if n > 0 else None


def _in_number(sub: int, b: int) -> int | None:
    """The number sub-state after byte `b`, or None if `b` does not continue the number."""
    digit = b in DIGITS
    if sub == SIGN:
        return (ZERO if b == ord("0") else INT) if digit else None
    if sub in (ZERO, INT, FRAC) and b in (ord("e"), ord("E")):
        return EXP_E
    if sub in (ZERO, INT) and b == ord("."):
        return DOT
    if sub == EXP_E and b in (ord("+"), ord("-")):
        return EXP_SIGN
    if digit and sub != ZERO:
        return {INT: INT, DOT: FRAC, FRAC: FRAC, EXP_E: EXP, EXP_SIGN: EXP, EXP: EXP}[sub]
    return None


def cost(state: State) -> int:
    """The fewest bytes that complete the object from `state`."""
    mode, stack, aux = state
    close = len(stack)
    if mode == START:
        return 2  # {}
    if mode == STR:
        is_key, esc, hex_left, cont, _ = aux
        return esc + hex_left + cont + 1 + (2 if is_key else 0) + close  # ..." (then :0 for a key)
    if mode == NUM:
        return (aux not in NUM_ENDS) + close
    if mode == LIT:
        return len(aux) + close
    return {VALUE: 1, KEY: 4, COLON: 2}.get(mode, 0) + close  # VALUE: 0; KEY: "":0; COLON: :0


def run(state: State, data: bytes) -> State | None:
    """The state after all of `data`, or None if it breaks the grammar."""
    for b in data:
        state = step(state, b)
        if state is None:
            return None
    return state


class JsonVocab:
    """A tokenizer's tokens as bytes, and per automaton state the tokens that may follow it.
    `size`: the model's vocabulary (logit rows), which may be padded past the tokenizer's."""

    MAX_CACHED = 1024

    def __init__(self, tokenizer: Any, size: int | None = None) -> None:
        special = set(tokenizer.special_tokens.values())
        self.size = size or tokenizer.vocab_size
        self.bytes = {i: tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size) if i not in special}
        self._by_first: dict[int, list[tuple[int, bytes]]] = {}  # tokens grouped by their first byte
        for i, data in self.bytes.items():
            if data:
                self._by_first.setdefault(data[0], []).append((i, data))
        self._follow: dict[State, tuple[list[tuple[int, State]], int]] = {}
        self._masks: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def follow(self, state: State) -> list[tuple[int, State]]:
        """(token id, state after it) for every token that keeps the text valid JSON."""
        return self._follow_and_worst(state)[0]

    def _follow_and_worst(self, state: State) -> tuple[list[tuple[int, State]], int]:
        hit = self._follow.get(state)
        if hit is None:
            options = []
            for first, tokens in self._by_first.items():  # one check rules out a whole group
                after_first = step(state, first)
                if after_first is not None:
                    options += [(i, s) for i, data in tokens if (s := run(after_first, data[1:])) is not None]
            hit = (options, max((cost(s) for _, s in options), default=0))
            if len(self._follow) >= self.MAX_CACHED:
                self._follow.clear()
            self._follow[state] = hit
        return hit

    def allowed(self, state: State, tokens_left: int, stop_ids: tuple[int, ...]) -> set[int]:
        """Token ids that may come next with `tokens_left` tokens of budget (this one included)."""
        if state[0] == DONE:
            return set(stop_ids)
        options = self.follow(state)
        ok = {i for i, s in options if cost(s) <= tokens_left - 1}
        if not ok and options:  # too little budget to finish: get as close as possible
            best = min(cost(s) for _, s in options)
            ok = {i for i, s in options if cost(s) == best}
        return ok

    def blocked(
        self, state: State, tokens_left: int, stop_ids: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids not `allowed`, as a (size,) bool mask and as a LongTensor of ids. Cached per state
        while the budget is no constraint (the common case), so a step usually costs one lookup."""
        if state[0] == DONE:
            key: Any = (state, stop_ids)
        elif tokens_left - 1 >= self._follow_and_worst(state)[1]:
            key = state
        else:
            key = None  # near the end of the budget: depends on tokens_left
        hit = self._masks.get(key) if key is not None else None
        if hit is None:
            mask = torch.ones(self.size, dtype=torch.bool)
            ok = list(self.allowed(state, tokens_left, stop_ids))
            if ok:
                mask[torch.tensor(ok)] = False
            hit = (mask, mask.nonzero().squeeze(1))
            if key is not None:
                if len(self._masks) >= self.MAX_CACHED:
                    self._masks.clear()
                self._masks[key] = hit
        return hit


class JsonBias:
    """A `SamplingParams.logit_bias` that masks every token which would break the JSON (see top);
    `base` is the request's own logit_bias, kept for the tokens the grammar allows.

    The scheduler reads `items()` from its stepping thread before each pick of this request; `attach`
    tells it where the request's tokens are. Until then it waits, so no token is picked unmasked."""

    def __init__(self, vocab: JsonVocab, params: Any, base: dict[int, float] | None = None) -> None:
        self.vocab, self.params, self.base = vocab, params, dict(base or {})
        self.state: State = INITIAL
        self._seen = 0  # tokens of the request already fed to the automaton
        self._handle: Any = None
        self._attached = threading.Event()

    def attach(self, handle: Any) -> None:
        """Follow `handle` (the RequestHandle that engine.submit returned for these params)."""
        self._handle = handle
        self._attached.set()

    def items(self) -> list[tuple[Any, float]]:
        """(token id, bias) pairs for the next pick: the request's own biases on allowed tokens, and one
        pair (a LongTensor of every forbidden id, -inf) that the sampler's `logits[token] += bias`
        applies as a single indexed add instead of one Python step per forbidden token."""
        self._attached.wait(timeout=10)
        tokens = self._handle.tokens if self._handle is not None else []
        for t in tokens[self._seen :]:
            self.state = run(self.state, self.vocab.bytes.get(t, b"")) or (DONE, "", 0)
        self._seen = len(tokens)
        mask, ids = self.vocab.blocked(self.state, self.params.max_tokens - len(tokens), self.params.stop_ids)
        return [*((i, b) for i, b in self.base.items() if not mask[i]), (ids, float("-inf"))]

    # what the engine asks of a logit_bias besides items(): truth (is the request penalised?) and
    # iteration (are its ids inside the vocabulary?)
    def __len__(self) -> int:
        return max(len(self.base), 1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.base)
