"""The built-in English <-> Chinese phrase lexicon (100 pairs) for the translation task.

Each entry is (English, Chinese); "|" separates accepted alternatives, the first one is the
reference answer. Train and test prompts share this lexicon and differ in their instruction
templates (see tasks/translate.py), so held-out accuracy measures following a new phrasing of a
known request, not knowledge of unseen words.
"""

from __future__ import annotations

PAIRS: tuple[tuple[str, str], ...] = (
    ("hello|hi", "你好"), ("thank you|thanks", "谢谢"), ("good morning", "早上好"), ("good night", "晚安"),
    ("goodbye|bye", "再见"), ("sorry", "对不起"), ("no problem", "没问题"), ("welcome", "欢迎"),
    ("happy birthday", "生日快乐"), ("happy new year", "新年快乐"), ("I love you", "我爱你"),
    ("see you tomorrow", "明天见"), ("how are you", "你好吗"), ("I am fine", "我很好"), ("excuse me", "打扰一下"),
    ("water", "水"), ("tea", "茶"), ("coffee", "咖啡"), ("rice", "米饭"), ("noodles", "面条"),
    ("apple", "苹果"), ("banana", "香蕉"), ("bread", "面包"), ("milk", "牛奶"), ("egg", "鸡蛋"),
    ("cat", "猫"), ("dog", "狗"), ("bird", "鸟"), ("fish", "鱼"), ("horse", "马"),
    ("sun", "太阳"), ("moon", "月亮"), ("star", "星星"), ("sky", "天空"), ("sea", "大海"),
    ("mountain", "山"), ("river", "河"), ("tree", "树"), ("flower", "花"), ("rain", "雨"),
    ("snow", "雪"), ("wind", "风"), ("cloud", "云"), ("fire", "火"), ("stone", "石头"),
    ("book", "书"), ("pen", "笔"), ("school", "学校"), ("teacher", "老师"), ("student", "学生"),
    ("friend", "朋友"), ("family", "家人"), ("mother", "妈妈|母亲"), ("father", "爸爸|父亲"), ("child", "孩子"),
    ("doctor", "医生"), ("hospital", "医院"), ("city", "城市"), ("country", "国家"), ("home", "家"),
    ("car", "汽车"), ("train", "火车"), ("plane|airplane", "飞机"), ("bicycle|bike", "自行车"), ("road", "路"),
    ("red", "红色"), ("blue", "蓝色"), ("green", "绿色"), ("white", "白色"), ("black", "黑色"),
    ("one", "一"), ("two", "二"), ("three", "三"), ("ten", "十"), ("hundred|one hundred", "一百"),
    ("today", "今天"), ("tomorrow", "明天"), ("yesterday", "昨天"), ("morning", "早上"), ("evening", "晚上"),
    ("spring", "春天"), ("summer", "夏天"), ("autumn|fall", "秋天"), ("winter", "冬天"), ("week", "星期"),
    ("big", "大"), ("small", "小"), ("hot", "热"), ("cold", "冷"), ("beautiful", "美丽|漂亮"),
    ("eat", "吃"), ("drink", "喝"), ("read", "读"), ("write", "写"), ("sleep", "睡觉"),
    ("music", "音乐"), ("computer", "电脑"), ("phone|telephone", "电话"), ("money", "钱"), ("time", "时间"),
)
