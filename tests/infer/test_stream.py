"""Text streaming never splits a UTF-8 character and never shows any part of a stop string."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pocketgpt.infer.stream import TextStream
from tests.infer.helpers import byte_tokenizer, zh_tokenizer

TEXT = "周一上班真的很爽。Hello, 世界! 今天天气很好 🙂 done"


def _stream(tok, ids, stop=()):
    s = TextStream(tok.token_bytes, stop)
    deltas = [s.push(i) for i in ids] + [s.flush()]
    return s, [d for d in deltas if d]


def test_chinese_streams_whole_characters_and_reassembles_exactly():
    for tok in (byte_tokenizer(), zh_tokenizer()):
        ids = tok.encode(TEXT)
        s, deltas = _stream(tok, ids)
        assert "".join(deltas) == tok.decode(ids) == TEXT == s.text
        assert all("\ufffd" not in d for d in deltas)  # a cut character is held back, never shown as garbage
    _, deltas = _stream(byte_tokenizer(), list("周".encode()))
    assert deltas == ["周"]  # three byte tokens -> one delta, at the third byte


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_reassemble_like_a_one_shot_decode(data):
    tok = byte_tokenizer()
    _, deltas = _stream(tok, list(data))
    assert "".join(deltas) == data.decode("utf-8", errors="replace")


def test_stop_string_split_across_tokens_is_never_emitted():
    tok = byte_tokenizer()
    text = "abc 周S 周ST not yet; 周STOP! tail"
    for stop in (("周STOP",), ("STOP", "zzz"), ("OP!",)):
        want = text[: min(text.find(s) for s in stop if s in text)]
        s, deltas = _stream(tok, list(text.encode()), stop)
        assert s.stopped and "".join(deltas) == want
        emitted = ""
        for d in deltas:  # at no moment is more than the final answer shown
            emitted += d
            assert want.startswith(emitted)
    s, deltas = _stream(tok, list(b"ends with ST"), ("STOP",))
    assert not s.stopped and "".join(deltas) == "ends with ST"  # a held prefix is released at the end
