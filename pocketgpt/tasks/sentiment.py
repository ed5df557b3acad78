"""Classifying a short review as positive or negative (a fixed label set), from a small lexicon of
subjects, adjectives and sentence templates. References are "positive"/"negative" in English and
"正面"/"负面" in Chinese; either language's label (and 积极/消极, 好评/差评) is accepted. An answer
naming both labels, or neither, scores 0."""

from __future__ import annotations

import random

from pocketgpt.tasks.answers import clean
from pocketgpt.tasks.task import Example, Task, example, templates_for

NAME = "sentiment"
LABELS = {"en": {"positive": "positive", "negative": "negative"}, "zh": {"positive": "正面", "negative": "负面"}}
SYNONYMS = {"positive": ("positive", "正面", "积极", "好评"), "negative": ("negative", "负面", "消极", "差评")}
SUBJECTS = {"en": ["the food", "the movie", "this phone", "the hotel room", "the service", "the book",
                   "the concert", "this laptop", "the coffee", "the trip"],
            "zh": ["这家餐厅的菜", "这部电影", "这部手机", "酒店房间", "服务", "这本书", "这场音乐会", "这台电脑",
                   "这杯咖啡", "这次旅行"]}
ADJECTIVES = {("en", "positive"): ["wonderful", "excellent", "great", "delightful", "amazing", "fantastic"],
              ("en", "negative"): ["terrible", "awful", "boring", "disappointing", "horrible", "poor"],
              ("zh", "positive"): ["很好", "非常棒", "令人满意", "特别出色", "太精彩了", "很不错"],
              ("zh", "negative"): ["很差", "太糟糕了", "令人失望", "非常无聊", "一塌糊涂", "很难用"]}
SENTENCES = {"en": ["{S} was {adj}.", "I think {s} is {adj}.", "Honestly, {s} was {adj}!", "Overall, {s} turned out {adj}."],
             "zh": ["{s}{adj}。", "我觉得{s}{adj}。", "说实话，{s}{adj}！", "总的来说，{s}{adj}。"]}
INSTRUCTIONS = {
    "en": ["Is the sentiment of this review positive or negative?",
           "Classify the sentiment of the sentence as positive or negative.",
           "Label this review: positive or negative?",
           "Is this review positive or negative?", "What is the sentiment here, positive or negative?",
           "Tell me whether this opinion is positive or negative.",
           "Does this sentence express a positive or a negative opinion?",
           "Positive or negative? Judge the review below."],
    "zh": ["这句话的情感是正面还是负面？", "判断下面评论的情感倾向：正面或负面。", "请把这条评论分类为正面或负面。",
           "这条评论是正面还是负面？", "下面这句话表达的是正面还是负面的看法？", "请判断情感：正面或负面。",
           "这条评价是正面的还是负面的？", "正面还是负面？请判断下面的评论。"],
}


def make(rng: random.Random, lang: str, split: str) -> Example:
    label = rng.choice(["positive", "negative"])
    subject, adj = rng.choice(SUBJECTS[lang]), rng.choice(ADJECTIVES[lang, label])
    sentence = rng.choice(SENTENCES[lang])  # content frames are shared; the request phrasing is held out
    sentence = sentence.format(s=subject, S=subject.capitalize(), adj=adj)
    instruction = rng.choice(templates_for(INSTRUCTIONS[lang], split))
    return example(NAME, lang, instruction, sentence, LABELS[lang][label], label=label)


def score(ex: Example, answer: str) -> float:
    """1.0 when the answer names the right label and not the other one."""
    text = clean(answer)
    named = {label for label, words in SYNONYMS.items() if any(w in text for w in words)}
    return float(named == {ex["meta"]["label"]})


TASK = Task(NAME, "classify a review as positive / negative (正面 / 负面)", make, score)
