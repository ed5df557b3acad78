"""The RLHF verbs end to end on a tiny random model: data preferences -> reward -> score, ppo (task
reward and reward model, LoRA), dpo; JSON summaries, files written, mistakes as one-line errors."""

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
from pocketgpt.text.preferences import read_preferences

TRAIN = ["--max-steps", "2", "--warmup-steps", "0", "--eval-every", "0", "--device", "cpu", "--json"]
PPO = [
    "--tasks",
    "arithmetic,sentiment",
    "--prompts",
    "8",
    "--rollout-batch",
    "4",
    "--minibatch",
    "2",
    "--epochs",
    "1",
    "--max-tokens",
    "4",
]


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    text = "3 + 4 = 7. 小明有三个苹果。 the film was great, positive 正面 negative 负面.\n" * 10
    tok = Tokenizer.train(
        text, 256 + len(specials.RESERVED) + 24, special_tokens=specials.RESERVED, progress=False
    )
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, d_model=16))
    return save_model(model, tmp_path_factory.mktemp("sft") / "m", tok)


@pytest.fixture(scope="module")
def prefs(sft, tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    assert (
        cli_main(
            [
                "data",
                "preferences",
                "--model",
                str(sft),
                "--out",
                str(out),
                "--n",
                "12",
                "--k",
                "3",
                "--tasks",
                "arithmetic,sentiment",
                "--max-tokens",
                "6",
                "--json",
            ]
        )
        == 0
    )
    return out


def test_data_preferences_writes_rankings_scored_by_the_tasks(prefs, capsys):
    data = read_preferences(prefs)
    lines = [json.loads(line) for line in prefs.read_text(encoding="utf-8").splitlines()]
    assert 1 <= len(lines) <= 12
    for rec in lines:
        assert sorted(rec["ranking"]) == list(range(len(rec["responses"])))
        assert rec["task"] in ("arithmetic", "sentiment") and rec["lang"] in ("en", "zh")
        best = rec["scores"][rec["ranking"][0]]
        assert best == max(rec["scores"])  # correctness first
    assert len(data.pairs) == sum(len(r["responses"]) * (len(r["responses"]) - 1) // 2 for r in lines)
    assert any("\u4e00" <= ch <= "\u9fff" for rec in lines for ch in rec["prompt"])  # Chinese prompts too


def test_reward_then_score(sft, prefs, tmp_path, capsys):
    capsys.readouterr()
    assert (
        cli_main(
            [
                "reward",
                str(sft),
                "--data",
                str(prefs),
                "--out",
                str(tmp_path / "rm"),
                "--batch-size",
                "2",
                *TRAIN,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["val_pairs"] >= 1
    assert 0.0 <= summary["val_pair_accuracy"] <= 1.0
    assert (tmp_path / "rm" / "reward_head.safetensors").is_file()
    assert cli_main(["score", str(tmp_path / "rm"), "3 + 4 = ?", "七", "--json"]) == 0
    score = json.loads(capsys.readouterr().out)["score"]
    assert isinstance(score, float)
    assert cli_main(["score", str(sft), "3 + 4 = ?", "7"]) == 2  # an SFT model is not a reward model
    assert "not a reward model" in capsys.readouterr().err


def test_ppo_with_the_task_reward_logs_and_plots(sft, tmp_path, capsys):
    out = tmp_path / "ppo"
    assert (
        cli_main(
            ["ppo", "--policy", str(sft), "--reward", "task", "--ptx", "0.1", "--out", str(out), *PPO, *TRAIN]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["reward"] == "task scorers"
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert steps[0]["kl"] == 0.0  # the first rollout comes from the reference itself
    assert {"entropy", "clipfrac", "value_loss", "approx_kl", "resp_len", "ptx_loss"} <= set(steps[0])
    assert any("val_task_acc" in r for r in rows)
    png = out / "train" / "ppo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.safetensors").is_file() and (out / "value_head.safetensors").is_file()


def test_ppo_lora_against_a_reward_model(sft, prefs, tmp_path, capsys):
    assert (
        cli_main(
            [
                "reward",
                str(sft),
                "--data",
                str(prefs),
                "--out",
                str(tmp_path / "rm"),
                "--batch-size",
                "2",
                "--max-steps",
                "1",
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "ppo-lora"
    assert (
        cli_main(
            [
                "ppo",
                "--policy",
                str(sft),
                "--reward",
                str(tmp_path / "rm"),
                "--peft",
                "lora",
                "--lora-r",
                "2",
                "--kl-target",
                "1.0",
                "--out",
                str(out),
                *PPO,
                *TRAIN,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["reward"].startswith("reward model")
    assert (out / "adapter.json").is_file()  # the policy is an adapter over the SFT base
    run = json.loads((out / "train" / "run.json").read_text())
    assert run["settings"]["reference"] == "adapter detached"


def test_dpo_cli(sft, prefs, tmp_path, capsys):
    capsys.readouterr()
    assert (
        cli_main(
            [
                "dpo",
                str(sft),
                "--data",
                str(prefs),
                "--out",
                str(tmp_path / "dpo"),
                "--batch-size",
                "2",
                *TRAIN,
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["val_loss"] is not None
    assert (tmp_path / "dpo" / "model.safetensors").is_file()


def test_bad_preference_file_names_the_line(sft, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "responses": ["a"]}\n',
        encoding="utf-8",
    )
    assert cli_main(["dpo", str(sft), "--data", str(bad), "--out", str(tmp_path / "d"), *TRAIN]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
