"""Preference JSONL: pairs and rankings -> K(K-1)/2 pairs, Chinese kept, bad lines named by file:line."""

from __future__ import annotations

import json

import pytest

from pocketgpt.errors import DataError
from pocketgpt.text.preferences import rank_responses, ranking_pairs, read_preferences, write_preferences


def test_ranking_gives_all_pairs_best_first():
    pairs = ranking_pairs("p", ["a", "b", "c", "d"], [2, 0, 3, 1])
    assert len(pairs) == 4 * 3 // 2
    order = ["c", "a", "d", "b"]
    assert [(p.chosen, p.rejected) for p in pairs] == [(order[i], order[j]) for i in range(4) for j in range(i + 1, 4)]


def test_read_both_forms_and_chinese(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_preferences(path, [
        {"prompt": "strawberry 里有几个 r", "chosen": "3", "rejected": "2", "task": "count_letters"},
        {"prompt": [{"role": "user", "content": "谢谢 in English?"}], "responses": ["thanks", "", "hello"],
         "ranking": [0, 2, 1]},
    ])
    assert "里有几个" in path.read_text(encoding="utf-8")  # not \u-escaped
    data = read_preferences(path)
    assert data.records == 2 and len(data.pairs) == 1 + 3
    assert data.pairs[0].meta == {"task": "count_letters"}
    assert data.pairs[1].messages("thanks")[-1] == {"role": "assistant", "content": "thanks"}


@pytest.mark.parametrize("line, why", [
    ("{not json", "not valid JSON"),
    ('{"chosen": "a", "rejected": "b"}', "missing 'prompt'"),
    ('{"prompt": "p", "chosen": "a"}', "'rejected' must be a string"),
    ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}', "'ranking' must list each index"),
    ('{"prompt": "p", "responses": ["a"], "ranking": [0]}', "at least 2"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_lines_named_with_file_and_line(tmp_path, line, why):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path.write_text(good + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"bad.jsonl:3: .*{why}"):
        read_preferences(path)
    data = read_preferences(path, on_error="skip")
    assert len(data.pairs) == 1 and len(data.problems) == 1 and data.problems[0].startswith(f"{path}:3:")


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such file.*pocketgpt data preferences"):
        read_preferences(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no usable records"):
        read_preferences(tmp_path / "empty.jsonl")


def test_rank_by_task_score_then_format():
    from pocketgpt import tasks

    ex = tasks.get_task("arithmetic").generate(1, seed=3)[0]
    right = ex["output"]
    wrong = str(int(right) + 1)
    responses = ["", wrong, right, f"the answer is {wrong} or so"]
    ranking = rank_responses(ex, responses)
    assert ranking[0] == 2  # correct first
    assert ranking[-1] == 0  # empty last among the wrong ones
