"""An adapter directory (what `pocketgpt sft --peft ...` writes) is a model directory for every
verb that runs a model: generate, predict, eval, eval-tasks, and `create --from DIR` + `run`. The
reference is independent of the adapter code path: the same LoRA merged into the weights and saved
as a plain model directory (`save_tuned(merge=True)`) must give the same tokens and numbers. An
adapter for another base, and fine-tuning on a prefix adapter, are refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pocketgpt.cli import main as cli
from pocketgpt.model import peft
from pocketgpt.model.checkpoint import load_model
from tests.serve.tiny_store import make_tiny_model

PROMPT = "It is a truth 周一上班"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """base, its LoRA adapter directory, the same LoRA merged (plain), a prefix adapter, another base."""
    root = tmp_path_factory.mktemp("adapters")
    base = make_tiny_model(root / "base")
    out = {"base": base}
    for method in ("lora", "prefix"):
        model, tok = load_model(base)
        peft.attach(model, peft.PeftConfig(method, r=4, alpha=8, targets=["attn.qkv", "mlp.fc"], n_virtual=3), seed=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a large update, so the adapter visibly changes what the model says
            for p in peft.adapter_state(model).values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        out[method] = peft.save_tuned(model, root / method, tok)
        if method == "lora":
            out["merged"] = peft.save_tuned(model, root / "merged", tok, merge=True)
    out["other"] = make_tiny_model(root / "other", vocab_size=300)
    return out


def _json(capsys, argv: list[str]) -> dict:
    assert cli([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_and_predict_run_the_adapter(dirs, capsys):
    assert not peft.has_adapter(dirs["merged"]) and peft.has_adapter(dirs["lora"])
    gen = ["generate", "_", PROMPT, "--temperature", "0", "--max-tokens", "10"]
    tokens = {k: _json(capsys, [gen[0], str(dirs[k]), *gen[2:]])["tokens"] for k in ("base", "lora", "merged", "prefix")}
    assert tokens["lora"] == tokens["merged"] != tokens["base"] and len(tokens["prefix"]) == 10
    top = {k: _json(capsys, ["predict", str(dirs[k]), PROMPT, "--top", "5"])["top"]
           for k in ("base", "lora", "merged", "prefix")}
    assert top["prefix"][0]["prob"] != pytest.approx(top["base"][0]["prob"], rel=1e-2)  # the prefix is attended to
    assert [r["id"] for r in top["lora"]] == [r["id"] for r in top["merged"]] != [r["id"] for r in top["base"]]
    for a, b in zip(top["lora"], top["merged"], strict=True):
        assert a["prob"] == pytest.approx(b["prob"], abs=1e-5)


def test_eval_perplexity_of_an_adapter_directory(dirs, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged. 今天天气很好，我们去公园散步吧。" * 8, encoding="utf-8")
    rows = _json(capsys, ["eval", str(dirs["base"]), str(dirs["lora"]), str(dirs["merged"]), "--data", str(text)])["rows"]
    loss = [r["loss"] for r in rows]
    assert loss[1] == pytest.approx(loss[2], rel=1e-5) and abs(loss[1] - loss[0]) > 1e-3


def test_store_create_from_an_adapter_directory_then_run(dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POCKETGPT_HOME", str(tmp_path))
    for name in ("lora", "merged"):
        assert cli(["create", f"t-{name}", "--from", str(dirs[name])]) == 0
    capsys.readouterr()
    answers = []
    for name in ("lora", "merged"):
        assert cli(["run", f"t-{name}", "你好", "--temperature", "0", "--num-predict", "8"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and answers[0].strip()


def test_adapter_for_another_base_and_sft_on_a_prefix_are_refused(dirs, tmp_path, capsys):
    lora, _ = load_model(dirs["lora"], adapter=False)
    peft.load_adapter(lora, dirs["lora"], merge=False)
    stray = peft.save_adapter(lora, tmp_path / "stray", base=str(dirs["other"]))  # names the wrong base
    assert cli(["generate", str(stray), PROMPT, "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "config hash" in err and str(dirs["other"]) in err
    assert cli(["sft", str(dirs["prefix"]), "--data", "builtin", "--n", "8", "--out", str(tmp_path / "o")]) == 2
    assert "prefix adapter, which cannot be merged" in capsys.readouterr().err
