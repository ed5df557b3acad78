"""Phrase translation, English <-> Chinese, from the built-in lexicon (tasks/lexicon.py). The
instruction's language is the example's `lang`; the direction is drawn separately, so a Chinese
instruction may ask for English and the other way round. Exact match after normalisation (case,
spaces inside Chinese, edge punctuation), against any listed alternative."""

from __future__ import annotations

import random

from pocketgpt.tasks.answers import clean
from pocketgpt.tasks.lexicon import PAIRS
from pocketgpt.tasks.task import Example, Task, example, templates_for

NAME = "translate"
INSTRUCTIONS = {  # (instruction language, target language) -> templates
    ("en", "zh"): ["Translate into Chinese.", "What is this in Chinese?", "Give the Chinese translation of this phrase.",
                   "Translate this phrase to Chinese.", "Chinese for this, please.", "Say this in Chinese.",
                   "How do you say this in Chinese?", "Render this phrase in Chinese."],
    ("en", "en"): ["Translate into English.", "What is this in English?", "Give the English translation of this phrase.",
                   "Translate this phrase to English.", "English for this, please.", "Say this in English.",
                   "How do you say this in English?", "Render this phrase in English."],
    ("zh", "zh"): ["翻译成中文。", "这个短语的中文是什么？", "请给出下面短语的中文翻译。", "请把它译成中文。",
                   "中文怎么说？", "把下面的短语翻成中文。", "用中文怎么说？", "请译为中文。"],
    ("zh", "en"): ["翻译成英文。", "这个短语的英文是什么？", "请给出下面短语的英文翻译。", "请把它译成英文。",
                   "英文怎么说？", "把下面的短语翻成英文。", "用英文怎么说？", "请译为英文。"],
}


def make(rng: random.Random, lang: str, split: str) -> Example:
    en, zh = rng.choice(PAIRS)
    target = rng.choice(["en", "zh"])
    source_text = (zh if target == "en" else en).split("|")[0]
    answers = (en if target == "en" else zh).split("|")
    instruction = rng.choice(templates_for(INSTRUCTIONS[lang, target], split))
    return example(NAME, lang, instruction, source_text, answers[0], target=target, accept=answers)


def score(ex: Example, answer: str) -> float:
    """1.0 when the answer is one of the accepted translations, else 0.0."""
    return float(_key(answer, ex["meta"]["target"]) in {_key(a, ex["meta"]["target"]) for a in ex["meta"]["accept"]})


def _key(text: str, target: str) -> str:
    text = clean(text)
    return text.replace(" ", "") if target == "zh" else text


TASK = Task(NAME, "translate a phrase en <-> zh from a 100-pair lexicon", make, score)
