"""The JSON automaton behind format=json (serve/json_mode.py), against Python's own `json` module:
every JSON object it is shown (compact, spaced or pretty-printed) is accepted to the end, nothing it accepts fails `json.loads`, `cost`
is the true shortest completion, and a random walk through the allowed tokens of a real tokenizer
always ends in a complete object within its token budget."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketgpt.serve.json_mode import DONE, INITIAL, JsonVocab, cost, run, step

pytestmark = pytest.mark.serve
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(), kids, max_size=4),
    max_leaves=12,
)
OBJECTS = st.dictionaries(st.text(max_size=6), VALUES, max_size=4)
SEPARATORS = st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", ":\t")])


def dumps(obj: object, ascii_only: bool, separators: tuple[str, str], indent: int | None = None) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only, separators=separators, indent=indent).encode()


@settings(max_examples=120, deadline=None)
@given(obj=OBJECTS, ascii_only=st.booleans(), separators=SEPARATORS, indent=st.sampled_from([None, 2]))
def test_every_json_object_is_accepted_to_the_end(
    obj: dict, ascii_only: bool, separators: tuple[str, str], indent: int | None
) -> None:
    state = INITIAL
    for b in dumps(obj, ascii_only, separators, indent):
        assert state[0] != DONE
        state = step(state, b)
        assert state is not None
    assert state[0] == DONE and cost(state) == 0


@settings(max_examples=200, deadline=None)
@given(obj=OBJECTS, data=st.data())
def test_whatever_it_accepts_is_valid_json(obj: dict, data: st.DataObject) -> None:
    text = bytearray(dumps(obj, True, (",", ":")))
    for _ in range(data.draw(st.integers(1, 3))):  # break it a little: delete, insert or replace a byte
        i = data.draw(st.integers(0, len(text)))
        byte = data.draw(st.sampled_from(b' {}[]":,0-.eE+tfnul\\x\x80\xe4\n\t\r\x0b\x0c'))
        match data.draw(st.sampled_from(["delete", "insert", "replace"])):
            case "delete" if i < len(text):
                del text[i]
            case "replace" if i < len(text):
                text[i] = byte
            case _:
                text.insert(i, byte)
    state = run(INITIAL, bytes(text))
    if state is not None and state[0] == DONE:
        assert isinstance(json.loads(bytes(text)), dict)


def shortest_completion(state: tuple) -> int:
    """Breadth-first search over the bytes that can finish JSON: the true minimum `cost` claims."""
    alphabet = b'{"0:}]a\x80\xa0rulse'  # and the rest of true, null, false
    seen, queue = {state}, deque([(state, 0)])
    while queue:
        s, n = queue.popleft()
        if s[0] == DONE:
            return n
        for b in alphabet:
            nxt = step(s, b)
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, n + 1))
    raise AssertionError("no completion")


@settings(max_examples=60, deadline=None)
@given(obj=OBJECTS, ascii_only=st.booleans(), data=st.data())
def test_cost_is_the_shortest_completion(obj: dict, ascii_only: bool, data: st.DataObject) -> None:
    text = dumps(obj, ascii_only, (", ", ": "))
    cut = data.draw(st.integers(0, len(text)))
    state = run(INITIAL, text[:cut])
    assert cost(state) == shortest_completion(state)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> tuple[JsonVocab, tuple[int, ...]]:
    from pocketgpt.text.bpe import Tokenizer

    tok = Tokenizer.load(tiny_dir)
    return JsonVocab(tok), (tok.special_tokens["<|endoftext|>"],)


@settings(max_examples=80, deadline=None)
@given(budget=st.integers(2, 40), data=st.data())
def test_any_walk_through_allowed_tokens_ends_in_json_within_budget(
    vocab, budget: int, data: st.DataObject
) -> None:
    words, stops = vocab
    state, text = INITIAL, b""
    for used in range(budget):
        allowed = sorted(words.allowed(state, budget - used, stops))
        assert allowed, "the mask must leave at least one token"
        token = data.draw(st.sampled_from(allowed))
        if token in stops:
            break
        text += words.bytes[token]
        state = run(state, words.bytes[token])
    assert state[0] == DONE and isinstance(json.loads(text), dict)
