"""Small mixed English/Chinese training text shared by the BPE tests (public-domain sources).

Imported by the other test_bpe*.py files; holds no tests itself.
"""

from __future__ import annotations

EN = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be on his "
    "first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families, "
    "that he is considered the rightful property of some one or other of their daughters.\n"
    "\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is let "
    "at last?\" Mr. Bennet replied that he had not. \"But it is,\" returned she; \"for Mrs. Long has just "
    "been here, and she told me all about it.\" Mr. Bennet made no answer. It's 1813; we'll see 42 things.\n"
)
ZH = (
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n"
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n"
    "国家主席江泽民发表新年讲话，迈向充满希望的新世纪。人民日报一九九八年一月一日。\n"
)
TEXT = (EN + ZH) * 3
