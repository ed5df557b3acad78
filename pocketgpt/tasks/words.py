"""Word order: reverse a list of words, or sort it alphabetically. Answers are the words separated
by spaces; commas and 、 are accepted too. Partial credit: the fraction of positions holding the
right word, over the longer of the two lists (so a missing or extra word costs, and the exact answer
alone scores 1.0)."""

from __future__ import annotations

import random

from pocketgpt.tasks.answers import words
from pocketgpt.tasks.task import Example, Task, example, templates_for

EN_WORDS = ["apple", "banana", "cherry", "dog", "cat", "river", "mountain", "sun", "moon", "tree", "book",
            "water", "green", "house", "bird", "music", "road", "cloud", "fish", "garden", "lamp", "stone",
            "paper", "window", "tiger", "bread", "chair", "light", "ocean", "star"]
ZH_WORDS = ["苹果", "香蕉", "樱桃", "小狗", "小猫", "河流", "高山", "太阳", "月亮", "大树", "书本", "清水",
            "绿色", "房子", "小鸟", "音乐", "道路", "白云", "金鱼", "花园", "台灯", "石头", "纸张", "窗户"]
REVERSE = {
    "en": ["Reverse the order of these words.", "Write these words in reverse order.",
           "Put the following words in the opposite order.", "Reverse this list of words.",
           "Write the words below from last to first.", "Flip the order of these words.",
           "List these words backwards, last word first.", "Give these words again, in reverse order."],
    "zh": ["把下面的词倒序排列。", "请把这些词按相反的顺序写出来。", "将下列词语的顺序颠倒。", "把这些词反过来排列。",
           "请倒序输出下面的词语。", "把下列词语从后往前写一遍。", "从最后一个词开始，倒着写出这些词。", "请将这组词的顺序反转。"],
}
SORT = {
    "en": ["Sort these words alphabetically.", "Put these words in alphabetical order.",
           "Arrange the following words from A to Z.", "Order these words alphabetically.",
           "Sort the words below from A to Z.", "Rearrange these words into alphabetical order.",
           "List these words in dictionary order.", "Alphabetize the following words."],
    "zh": ["把这些英文单词按字母顺序排列。", "请将下列单词按字母表顺序排序。", "按照从 A 到 Z 的顺序排列这些单词。",
           "请按字母顺序重新排列下面的单词。", "把下列单词从 A 到 Z 排好。", "将这些单词按首字母顺序排列。",
           "把下面的单词按字典顺序写出来。", "请对这些英文单词做字母排序。"],
}


def make_reverse(rng: random.Random, lang: str, split: str) -> Example:
    items = rng.sample(EN_WORDS if lang == "en" else ZH_WORDS, rng.randint(3, 5))
    instruction = rng.choice(templates_for(REVERSE[lang], split))
    return example("reverse_words", lang, instruction, " ".join(items), " ".join(reversed(items)))


def make_sort(rng: random.Random, lang: str, split: str) -> Example:
    items = rng.sample(EN_WORDS, rng.randint(3, 5))  # alphabetical order is about Latin letters in both languages
    instruction = rng.choice(templates_for(SORT[lang], split))
    return example("sort_words", lang, instruction, " ".join(items), " ".join(sorted(items)))


def score(ex: Example, answer: str) -> float:
    """Fraction of positions that match the reference, over the longer list."""
    want, got = ex["output"].split(), words(answer)
    if not got:
        return 0.0
    right = sum(g == w for g, w in zip(got, want, strict=False))
    return right / max(len(want), len(got))


REVERSE_TASK = Task("reverse_words", "reverse a list of 3-5 words", make_reverse, score)
SORT_TASK = Task("sort_words", "sort 3-5 English words alphabetically", make_sort, score)
