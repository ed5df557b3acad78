"""Lenient answer reading: full-width forms, Chinese numerals, words, JSON inside chatter."""

from __future__ import annotations

import pytest

from pocketgpt.tasks.answers import (
    chinese_to_int,
    clean,
    json_object,
    last_number,
    numbers,
    same_value,
    words,
)


@pytest.mark.parametrize("text,value", [("零", 0), ("七", 7), ("十", 10), ("十二", 12), ("二十", 20), ("二十三", 23),
                                        ("两", 2), ("一百零五", 105), ("三百", 300), ("一千零一", 1001), ("三五", 35),
                                        ("两万", 20000)])
def test_chinese_numerals(text, value):
    assert chinese_to_int(text) == value


def test_numbers_and_last_number():
    assert numbers("３ + 4 = 七") == [3, 4, 7]
    assert last_number("The answer is 12.") == 12 and last_number("一共有十二个") == 12
    assert last_number("-3") == -3 and last_number("none") is None and chinese_to_int("几") is None


def test_clean_words_json():
    assert clean("  “Positive！” ") == "positive"
    assert words("樱桃、香蕉，苹果") == ["樱桃", "香蕉", "苹果"] and words("a,  b c.") == ["a", "b", "c"]
    assert json_object('Sure! ```json\n{"a": [1, {"b": 2}]}\n``` done') == {"a": [1, {"b": 2}]}
    assert json_object("{bad} then {\"ok\": 1}") == {"ok": 1} and json_object("[1, 2]") is None
    assert json_object("｛\"a\"：１｝") == {"a": 1}  # full-width braces, colon and digit
    assert same_value("12", 12) and same_value(" Paris. ", "paris") and not same_value("13", 12)
