"""Reading a model's answer leniently: full-width forms, Chinese numerals, stray words and fences.

Scorers compare *meaning*, not bytes: "７", "7", "七" and "The answer is 7." all read as 7, and a JSON
object is found inside a ```json fence. Every function here is pure text -> value.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CN_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_NUMBER = re.compile(r"-?\d+|[零〇一二两三四五六七八九十百千万]+")
_SEPARATORS = re.compile(r"[\s,，、;；]+")
_EDGE_PUNCT = "\"'“”‘’`.。!！?？:：()（）[]【】<>《》"


def normalize(text: str) -> str:
    """NFKC (full-width digits, letters and punctuation -> ASCII), trimmed, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def chinese_to_int(s: str) -> int | None:
    """"七" -> 7, "十二" -> 12, "二十" -> 20, "一百零五" -> 105, "三五" -> 35 (digit by digit); else None."""
    if not s or any(c not in CN_DIGITS and c not in CN_UNITS for c in s):
        return None
    if not any(c in CN_UNITS for c in s):
        return int("".join(str(CN_DIGITS[c]) for c in s))
    total, section, digit = 0, 0, None
    for c in s:
        if c in CN_DIGITS:
            digit = CN_DIGITS[c]
        elif c == "万":
            total += (section + (digit or 0)) * 10000
            section, digit = 0, None
        else:  # 十 百 千: a bare 十 at the start means 1 x 10
            section += (1 if digit is None else digit) * CN_UNITS[c]
            digit = None
    return total + section + (digit or 0)


def numbers(text: str) -> list[int]:
    """Every integer written in `text`, in order, Arabic or Chinese ("3 + 4 = 七" -> [3, 4, 7])."""
    out = []
    for m in _NUMBER.findall(normalize(text)):
        value = int(m) if m.lstrip("-").isdigit() else chinese_to_int(m)
        if value is not None:
            out.append(value)
    return out


def last_number(text: str) -> int | None:
    """The answer's last integer (the GSM8K convention: "3 + 4 = 7" answers 7), or None."""
    found = numbers(text)
    return found[-1] if found else None


def clean(text: str) -> str:
    """Normalised, case-folded, without surrounding quotes or sentence punctuation: for exact matches."""
    return normalize(text).strip(_EDGE_PUNCT + " ").casefold()


def words(text: str) -> list[str]:
    """Split on spaces, commas and 、 after cleaning: "樱桃、香蕉、苹果" -> ["樱桃", "香蕉", "苹果"]."""
    return [w.strip(_EDGE_PUNCT) for w in _SEPARATORS.split(clean(text)) if w.strip(_EDGE_PUNCT)]


def json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text` (fences and chatter around it are ignored), or None."""
    text = unicodedata.normalize("NFKC", text)
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


def same_value(got: Any, want: Any) -> bool:
    """Field equality for JSON answers: numbers compare as numbers ("12" == 12), text with `clean`."""
    if isinstance(want, int) and not isinstance(want, bool):
        return (last_number(str(got)) if not isinstance(got, int) else got) == want
    return clean(str(got)) == clean(str(want))
