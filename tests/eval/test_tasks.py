"""eval-tasks: prompts through the chat template, greedy answers from the Engine, per-task scores.
The end-to-end check trains a tiny model on the task data (assistant-only loss) and watches the
measured accuracy go from 0 to near 1: the number moves with what the model can do."""

from __future__ import annotations

import json

import pytest
import torch

from pocketgpt import tasks
from pocketgpt.cli import main as cli_main
from pocketgpt.config import ModelConfig
from pocketgpt.eval.tasks import evaluate_tasks, generate_answers, prompt_ids, summarize
from pocketgpt.model.checkpoint import save_model
from pocketgpt.model.gpt import GPT
from pocketgpt.text import specials
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.chat import PLAIN, POCKETGPT
from pocketgpt.text.instructions import to_messages


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = "\n".join(e["instruction"] + " " + e["input"] + " " + e["output"] for e in tasks.generate(400))
    return Tokenizer.train(text, 400, special_tokens=specials.RESERVED, progress=False)


def tiny(tok: Tokenizer, block_size: int = 96, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, d_model=64)).eval()


def test_prompt_is_one_user_turn_and_the_assistant_header(tok):
    ex = tasks.get_task("reverse_words").generate(1, langs=["zh"], split="test")[0]
    ids = prompt_ids(tok, POCKETGPT, ex)
    assert tok.decode(ids) == f"<|user|>{ex['instruction']}\n\n{ex['input']}<|end|>\n<|assistant|>"
    assert ids[-1] == tok.special_tokens[specials.ASSISTANT]
    with_system = tok.decode(prompt_ids(tok, POCKETGPT, ex, system="简短回答"))
    assert with_system == f"<|system|>简短回答<|end|>\n<|user|>{ex['instruction']}\n\n{ex['input']}<|end|>\n<|assistant|>"


def test_untrained_model_report_shape_and_determinism(tok):
    model = tiny(tok)
    a = evaluate_tasks(model, tok, n=2, max_tokens=6)
    b = evaluate_tasks(model, tok, n=2, max_tokens=6)
    assert a == b  # greedy: the same answers every time
    assert a["template"] == "pocketgpt" and a["split"] == "test" and a["too_long"] == 0
    assert [r["task"] for r in a["tasks"]] == list(tasks.TASKS) and all(r["n"] == 2 for r in a["tasks"])
    assert all(set(r["by_lang"]) == {"en", "zh"} for r in a["tasks"])
    assert 0.0 <= a["overall"] <= 1.0 and len(a["samples"]) == 2 * len(tasks.TASKS)
    json.dumps(a)


def test_too_long_prompts_score_zero_not_crash(tok):
    model = tiny(tok, block_size=40)
    r = evaluate_tasks(model, tok, task_names="extract", n=4, max_tokens=4)
    assert r["too_long"] == 4 and r["overall"] == 0.0


def test_summarize_numbers():
    exs = [{"task": "a", "lang": "en"}, {"task": "a", "lang": "zh"}, {"task": "a", "lang": "zh"}, {"task": "b", "lang": "en"}]
    rows = summarize(["a", "b"], exs, [1.0, 0.5, 0.0, 1.0])
    assert rows[0].accuracy == pytest.approx(0.5) and rows[0].exact == pytest.approx(1 / 3)
    assert rows[0].by_lang == {"en": 1.0, "zh": 0.25} and rows[1].accuracy == 1.0 and rows[1].n == 1


def test_plain_template_on_a_tokenizer_without_chat_tokens():
    gpt2 = Tokenizer.gpt2()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=gpt2.vocab_size, block_size=96, n_layer=1, n_head=2, d_model=32)).eval()
    exs = tasks.get_task("arithmetic").generate(3, split="test")
    answers, too_long = generate_answers(model, gpt2, PLAIN, exs, max_tokens=5)
    assert len(answers) == 3 and too_long == 0
    assert gpt2.decode(prompt_ids(gpt2, PLAIN, exs[0])) == f"User: {exs[0]['instruction']}\nAssistant: "


def test_cli_table_and_json(tok, tmp_path, capsys):
    save_model(tiny(tok), tmp_path / "m", tok)
    m = str(tmp_path / "m")
    assert cli_main(["eval-tasks", m, "--n", "2", "--tasks", "sentiment,translate", "--max-tokens", "4", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [t["task"] for t in r["tasks"]] == ["sentiment", "translate"] and r["model"] == m
    assert cli_main(["eval-tasks", m, "--n", "2", "--tasks", "sentiment", "--max-tokens", "4"]) == 0
    table = capsys.readouterr().out
    assert "sentiment" in table and "overall" in table and "accuracy" in table
    assert cli_main(["eval-tasks", m, "--tasks", "chess"]) == 2
    assert "unknown task 'chess'" in capsys.readouterr().err
    for name in ("pocketgpt-tokenizer.json", "vocab.json", "merges.txt", "tokenizer.tiktoken"):
        (tmp_path / "m" / name).unlink(missing_ok=True)
    assert cli_main(["eval-tasks", m]) == 2
    assert "no tokenizer files" in capsys.readouterr().err


def _memorise(model: GPT, tok: Tokenizer, examples: list[dict], steps: int) -> None:
    """Full-batch steps of the SFT objective (next-token loss on assistant tokens only) until the
    model has learned these conversations by heart."""
    rows = [POCKETGPT.encode_with_mask(tok, to_messages(e)) for e in examples]
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -1)
    for i, (ids, mask) in enumerate(rows):
        x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, : len(ids) - 1] = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.slow
def test_a_model_trained_on_the_eval_conversations_scores_one(tok):
    """Training encodes with encode_with_mask, eval prompts with encode + generation prompt and stops
    at <|end|>: if the two disagreed by one token, the memorised answers would not come back."""
    names = "arithmetic,sentiment,translate,json_format"
    model = tiny(tok)
    before = evaluate_tasks(model, tok, task_names=names, n=2, seed=1, max_tokens=40)
    examples = [e for n in names.split(",") for e in tasks.get_task(n).generate(2, seed=1, split="test")]
    _memorise(model, tok, examples, steps=70)
    after = evaluate_tasks(model, tok, task_names=names, n=2, seed=1, max_tokens=40)
    assert before["overall"] == 0.0 and after["overall"] == 1.0, [(s["answer"], s["reference"]) for s in after["samples"]]


def test_an_adapter_directory_is_evaluated_with_its_adapter(tok, tmp_path, capsys):
    peft = pytest.importorskip("pocketgpt.model.peft")
    model = tiny(tok)
    peft.attach(model, peft.PeftConfig("lora", r=2))
    for name, p in model.named_parameters():  # a non-zero update, so the adapter changes the answers
        if "lora" in name.lower():
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(0))
    peft.save_tuned(model, tmp_path / "lora", tok)
    assert peft.has_adapter(tmp_path / "lora")
    with peft.detached(model):
        plain = evaluate_tasks(model, tok, task_names="sentiment", n=2, max_tokens=4)["samples"]
    assert cli_main(["eval-tasks", str(tmp_path / "lora"), "--n", "2", "--tasks", "sentiment", "--max-tokens", "4",
                     "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)["samples"]
    assert tuned == json.loads(json.dumps(evaluate_tasks(model.eval(), tok, task_names="sentiment", n=2, max_tokens=4)["samples"]))
    assert [s["answer"] for s in tuned] != [s["answer"] for s in plain]
