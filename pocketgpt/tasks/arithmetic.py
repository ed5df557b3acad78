"""Arithmetic word problems with small numbers (sums to 20, differences >= 0, products to 9 x 9),
so that a tiny model can learn them. The answer is the bare number; scoring reads the answer's last
number, Arabic, full-width or Chinese ("7", "７", "七个" all answer 7)."""

from __future__ import annotations

import random

from pocketgpt.tasks.answers import last_number
from pocketgpt.tasks.task import Example, Task, example, templates_for

NAME = "arithmetic"
PEOPLE = {"en": ["Tom", "Anna", "Li Lei", "Sara", "Ben", "Mia", "Omar", "Lucy"],
          "zh": ["小明", "小红", "李雷", "韩梅梅", "王芳", "张伟", "小刚", "丽丽"]}
# (English plural, Chinese noun, Chinese measure word)
ITEMS = [("apples", "苹果", "个"), ("books", "书", "本"), ("pencils", "铅笔", "支"), ("cards", "卡片", "张"),
         ("stickers", "贴纸", "张"), ("eggs", "鸡蛋", "个"), ("balloons", "气球", "个"), ("cups", "杯子", "个")]
TEMPLATES = {
    ("en", "add"): ["{p} has {a} {item}. {p} buys {b} more. How many {item} does {p} have now?",
                    "There are {a} {item} on the table and {b} more in a bag. How many {item} are there in total?",
                    "{p} found {a} {item} in the morning and {b} {item} in the afternoon. How many {item} did {p} find?",
                    "{p} gets {a} {item} from a friend and {b} {item} from a teacher. How many {item} does {p} get?",
                    "How much is {a} + {b}?",
                    "What is {a} plus {b}?"],
    ("en", "sub"): ["{p} has {a} {item} and gives away {b}. How many {item} are left?",
                    "There were {a} {item}. {b} of them were used. How many {item} remain?",
                    "{p} had {a} {item} and lost {b}. How many {item} does {p} have now?",
                    "A shop had {a} {item} and sold {b}. How many {item} are still in the shop?",
                    "How much is {a} - {b}?",
                    "What is {a} minus {b}?"],
    ("en", "mul"): ["There are {a} boxes with {b} {item} in each box. How many {item} are there?",
                    "{p} buys {a} packs of {item}. Each pack has {b} {item}. How many {item} is that?",
                    "There are {a} rows of {item} with {b} in each row. How many {item} are there?",
                    "What is {a} times {b}?"],
    ("zh", "add"): ["{p}有{a}{m}{item}，又买了{b}{m}。{p}现在有几{m}{item}？",
                    "桌子上有{a}{m}{item}，袋子里还有{b}{m}。一共有多少{m}{item}？",
                    "{p}上午找到{a}{m}{item}，下午又找到{b}{m}。{p}一共找到几{m}{item}？",
                    "朋友给了{p}{a}{m}{item}，老师又给了{b}{m}。{p}一共得到几{m}{item}？",
                    "{a}+{b}是多少？",
                    "{a}加{b}等于多少？"],
    ("zh", "sub"): ["{p}有{a}{m}{item}，送给别人{b}{m}。还剩几{m}{item}？",
                    "原来有{a}{m}{item}，用掉了{b}{m}。还剩多少{m}{item}？",
                    "{p}有{a}{m}{item}，丢了{b}{m}。{p}现在有几{m}{item}？",
                    "商店里有{a}{m}{item}，卖掉了{b}{m}。店里还有几{m}{item}？",
                    "{a}-{b}是多少？",
                    "{a}减{b}等于多少？"],
    ("zh", "mul"): ["有{a}个盒子，每个盒子里有{b}{m}{item}。一共有多少{m}{item}？",
                    "{p}买了{a}包{item}，每包{b}{m}。一共有多少{m}{item}？",
                    "{item}摆了{a}排，每排{b}{m}。一共有多少{m}{item}？",
                    "{a}乘以{b}等于多少？"],
}


def make(rng: random.Random, lang: str, split: str) -> Example:
    op = rng.choice(["add", "add", "sub", "sub", "mul"])
    if op == "add":
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        answer = a + b
    elif op == "sub":
        a = rng.randint(3, 20)
        b = rng.randint(1, a - 1)
        answer = a - b
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        answer = a * b
    en_item, zh_item, measure = rng.choice(ITEMS)
    template = rng.choice(templates_for(TEMPLATES[lang, op], split))
    question = template.format(p=rng.choice(PEOPLE[lang]), a=a, b=b, m=measure,
                               item=en_item if lang == "en" else zh_item)
    return example(NAME, lang, question, "", str(answer), op=op, a=a, b=b)


def score(ex: Example, answer: str) -> float:
    """1.0 when the answer's last number is the result, else 0.0."""
    return float(last_number(answer) == int(ex["output"]))


TASK = Task(NAME, "word problems: add, subtract, multiply small numbers", make, score)
