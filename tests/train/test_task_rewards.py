"""Task rewards and rule-ranked preference records: correct answers first, ties kept once, bilingual."""

from __future__ import annotations

from pocketgpt.text.preferences import ranking_pairs
from pocketgpt.train.task_rewards import preference_records, prompt_items, task_reward


def test_prompt_items_carry_the_user_turn_and_the_reference():
    items = prompt_items(4, task_names="arithmetic", split="test")
    assert [it["lang"] for it in items] == ["en", "zh", "en", "zh"]
    assert all(it["messages"][0]["role"] == "user" and it["output"] for it in items)
    assert task_reward(items, [it["output"] for it in items]) == [1.0] * 4


def test_records_rank_right_first_and_drop_ties():
    item = prompt_items(1, task_names="arithmetic")[0]
    right = item["output"]
    wrong = [w for w in ("91", "92", "93") if w != right][:2]  # two wrong answers of one length: a tie
    records = preference_records([item, item], [[*wrong, right, "", wrong[0]], [wrong[0], wrong[0]]])
    assert len(records) == 1  # the second item's answers are all one text: no record
    rec = records[0]
    assert rec["responses"] == [wrong[0], right, ""]  # the tie's first sample kept, duplicates dropped
    best, *rest = rec["ranking"]
    assert rec["responses"][best] == right and rec["scores"][best] == 1.0
    pairs = ranking_pairs(rec["prompt"], rec["responses"], rec["ranking"])
    assert [(p.chosen, p.rejected) for p in pairs] == [(right, wrong[0]), (right, ""), (wrong[0], "")]
