"""`pocketgpt sft` and `pocketgpt finetune` end to end on a tiny model directory: JSON summary,
adapter directory written, a bad JSONL line reported with file:line (skip) or fatal (fail)."""

from __future__ import annotations

import json

import pytest
import torch

from pocketgpt.cli import main as cli_main
from pocketgpt.config import ModelConfig
from pocketgpt.model.checkpoint import save_model
from pocketgpt.model.gpt import GPT
from pocketgpt.text import specials
from pocketgpt.text.bpe import Tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    text = "3 + 4 = 7. 这部电影很好。 the film was great, the plot was awful.\n" * 10
    tok = Tokenizer.train(text, 256 + len(specials.RESERVED) + 20, special_tokens=specials.RESERVED, progress=False)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, d_model=16))
    return save_model(model, tmp_path_factory.mktemp("base") / "m", tok)


FAST = ["--max-steps", "3", "--batch-size", "2", "--warmup-steps", "1", "--eval-every", "0", "--device", "cpu", "--json"]


def test_sft_lora_cli_writes_an_adapter_and_reports_bad_lines(base, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [{"instruction": "3 + 4 = ?", "output": "7"}, {"messages": [{"role": "user", "content": "好吗?"},
                                                                        {"role": "assistant", "content": "很好。"}]}]
    data.write_text(json.dumps(rows[0]) + "\n{broken\n" + json.dumps(rows[1], ensure_ascii=False) + "\n" * 2
                    + (json.dumps(rows[0]) + "\n") * 20, encoding="utf-8")
    assert cli_main(["sft", str(base), "--data", str(data), "--out", str(tmp_path / "x"), *FAST]) == 2
    assert f"{data}:2: not valid JSON" in capsys.readouterr().err
    assert cli_main(["sft", str(base), "--data", str(data), "--out", str(tmp_path / "o"), "--on-error", "skip",
                     "--peft", "lora", "--lora-r", "2", *FAST]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["steps"] == 3 and summary["skipped"] == 1 and summary["peft"] == "lora"
    assert f"skipped {data}:2" in out.err and "trainable" in out.err
    assert (tmp_path / "o" / "adapter.json").is_file() and (tmp_path / "o" / "config.json").is_file()


def test_finetune_cli_prints_accuracy_and_confusion(base, tmp_path, capsys):
    data = tmp_path / "cls.jsonl"
    recs = [{"text": "the film was great", "label": "pos"}, {"text": "the plot was awful", "label": "neg"}] * 10
    data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    assert cli_main(["finetune", str(base), "--task", "classification", "--data", str(data),
                     "--out", str(tmp_path / "f"), *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == ["neg", "pos"] and len(summary["confusion"]) == 2
    assert 0.0 <= summary["val_accuracy"] <= 1.0
    assert (tmp_path / "f" / "task.json").is_file()
