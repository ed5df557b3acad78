"""Counting a letter in a word ("How many r's are in strawberry?" / "strawberry 里有几个 r？"): easy
for people, hard for a model that sees tokens rather than letters. The answer is the bare count;
scoring reads the answer's last number (Arabic, full-width or Chinese)."""

from __future__ import annotations

import random

from pocketgpt.tasks.answers import last_number
from pocketgpt.tasks.task import Example, Task, example, templates_for

NAME = "count_letters"
WORDS = ["strawberry", "banana", "apple", "letter", "mississippi", "balloon", "coffee", "bookkeeper",
         "committee", "tomorrow", "parallel", "assessment", "cheese", "pepper", "rhythm", "success",
         "address", "butterfly", "cinnamon", "giraffe", "hello", "kitten", "llama", "moon", "noodle",
         "orange", "puzzle", "raccoon", "sheep", "tattoo", "umbrella", "window", "zebra", "dinner",
         "summer", "yellow", "grass", "little", "happy", "pizza"]
TEMPLATES = {
    "en": ["How many {c}'s are in {w}?", "How many times does the letter {c} appear in \"{w}\"?",
           "Count the letter {c} in the word {w}.", "How often does {c} occur in the word {w}?",
           "Tell me how many {c}'s the word {w} contains.", "What is the number of {c}'s in {w}?",
           "In the word {w}, how many {c}'s are there?", "Give the count of the letter {c} in \"{w}\"."],
    "zh": ["{w} 里有几个 {c}？", "单词 {w} 中字母 {c} 出现了几次？", "数一数 {w} 里有多少个字母 {c}。",
           "字母 {c} 在 {w} 中出现几次？", "请告诉我 {w} 包含几个 {c}。", "{w} 一共有多少个 {c}？",
           "{w} 这个单词里有几个 {c}？", "统计单词 {w} 中字母 {c} 的个数。"],
}


def make(rng: random.Random, lang: str, split: str) -> Example:
    word = rng.choice(WORDS)
    if rng.random() < 0.1:  # now and then a letter that is absent: the answer is 0
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c not in word])
    else:
        letter = rng.choice(sorted(set(word)))
    question = rng.choice(templates_for(TEMPLATES[lang], split)).format(w=word, c=letter)
    return example(NAME, lang, question, "", str(word.count(letter)), word=word, letter=letter)


def score(ex: Example, answer: str) -> float:
    """1.0 when the answer's last number is the count, else 0.0."""
    return float(last_number(answer) == int(ex["output"]))


TASK = Task(NAME, "count a letter in a word (strawberry 里有几个 r)", make, score)
