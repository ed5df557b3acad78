"""Instruction SFT through the one training loop: full fine-tuning learns the answers, LoRA /
prefix / prompt train only their own tensors and save a directory that loads back to the same
outputs; built-in task data (English and Chinese) becomes rows."""

from __future__ import annotations

import pytest
import torch

from pocketgpt import tasks
from pocketgpt.config import ModelConfig
from pocketgpt.errors import DataError
from pocketgpt.model import peft
from pocketgpt.model.checkpoint import load_model
from pocketgpt.model.gpt import GPT
from pocketgpt.text import specials
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.chat import POCKETGPT
from pocketgpt.text.instructions import to_messages
from pocketgpt.train.loop import TrainConfig, train
from pocketgpt.train.sft import DEFAULT_ROW, row_length, sft_rows, sft_stage

CONVS = [[{"role": "user", "content": f"{a} + {b} = ?"}, {"role": "assistant", "content": str(a + b)}]
         for a in range(4) for b in range(4)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = " ".join(f"{a} + {b} = ? {a + b}" for a in range(9) for b in range(9)) + " 这是 几个 字母 strawberry\n"
    return Tokenizer.train(text * 3, 256 + len(specials.RESERVED) + 30, special_tokens=specials.RESERVED, progress=False)


def _gpt(tok, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, d_model=32))


def _cfg(steps=40, lr=3e-3) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=4, lr=lr, warmup_steps=5, eval_every=0, ckpt_every=0,
                       log_every=10, progress=False, device="cpu", eval_batches=2)


def _answer_loss(model, tok) -> float:
    rows = sft_rows(CONVS, tok, 48, pack=False)  # room for a soft prompt
    x = torch.tensor([r[0] for r in rows])
    y = torch.tensor([r[1] for r in rows])
    with torch.no_grad():
        return model.eval()(x, y).item()


def test_rows_from_builtin_tasks_both_languages(tok):
    exs = tasks.generate(16, seed=0, tasks="count_letters,arithmetic")
    assert {e["lang"] for e in exs} == {"en", "zh"}
    convs = [to_messages(e) for e in exs]
    rows = sft_rows(convs, tok, 128, template=POCKETGPT)
    assert all(len(x) == len(y) == 128 for x, y in rows)
    answers = [tok.decode([t for t in y if t >= 0]) for _, y in rows]
    assert all("<|end|>" in a for a in answers)
    assert sum(a.count("<|end|>") for a in answers) == len(convs)  # every conversation, once


def test_row_length_defaults_to_the_context_capped_and_refuses_what_does_not_fit(tok):
    model = _gpt(tok)
    assert row_length(model) == 64 and row_length(model, 32) == 32
    long = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=4 * DEFAULT_ROW, n_layer=1, n_head=2, d_model=16))
    assert row_length(long) == DEFAULT_ROW  # an 8k-context import does not pack 8k-token rows
    with pytest.raises(DataError, match="--block-size 65: rows must be 8..64"):
        row_length(model, 65)
    peft.attach(model, peft.PeftConfig("prompt", n_virtual=4))
    assert row_length(model, 32) == 28  # the soft prompt takes its positions from the row
    stage = sft_stage(model, tok, CONVS, CONVS[:4], batch_size=4, block_size=32)
    assert stage.settings["block_size"] == 28


@pytest.mark.slow
def test_full_sft_learns_the_answers(tok, tmp_path):
    model = _gpt(tok)
    before = _answer_loss(model, tok)
    stage = sft_stage(model, tok, CONVS, CONVS[:4], batch_size=4, seed=0)
    result = train(stage, _cfg(50), tmp_path / "sft")
    after = _answer_loss(model, tok)
    assert after < 0.5 * before, (before, after)
    loaded, tok2 = load_model(tmp_path / "sft")  # a plain model directory
    assert tok2 is not None and abs(_answer_loss(loaded, tok2) - after) < 1e-5
    assert result.val_loss is not None


@pytest.mark.slow
@pytest.mark.parametrize("method", peft.METHODS)
def test_peft_sft_trains_only_the_adapter_and_round_trips(tok, tmp_path, method):
    model = _gpt(tok)
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    peft.attach(model, peft.PeftConfig(method, r=8, alpha=16, n_virtual=4))
    print(method, peft.describe(model))
    before = _answer_loss(model, tok)
    stage = sft_stage(model, tok, CONVS, CONVS[:4], batch_size=4, seed=0)
    train(stage, _cfg(30, lr=1e-2), tmp_path / method)
    after = _answer_loss(model, tok)
    assert after < before, (before, after)
    with peft.detached(model):
        for n, p in model.state_dict().items():
            assert torch.equal(p, base[n]), f"base tensor {n} changed"
    assert (tmp_path / method / "adapter.safetensors").is_file()
    again, _ = peft.load_model_with_adapter(tmp_path / method)
    assert abs(_answer_loss(again, tok) - after) < 1e-5


def test_lora_merge_on_save_writes_a_plain_model(tok, tmp_path):
    model = _gpt(tok)
    peft.apply_lora(model)
    stage = sft_stage(model, tok, CONVS, CONVS[:4], batch_size=4, seed=0, merge=True)
    train(stage, _cfg(20, lr=1e-2), tmp_path / "m")
    assert not (tmp_path / "m" / "adapter.json").exists()
    plain, _ = load_model(tmp_path / "m")
    assert abs(_answer_loss(plain, tok) - _answer_loss(model, tok)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", peft.METHODS)
def test_adapter_run_resumes_exactly(tok, tmp_path, method):
    """3 steps, stop, resume to 6 == 6 steps straight: the loop's checkpoint carries the adapter."""
    import dataclasses

    def run(out, steps, resume=False):
        model = _gpt(tok)
        peft.attach(model, peft.PeftConfig(method, r=4, n_virtual=4))
        stage = sft_stage(model, tok, CONVS, CONVS[:4], batch_size=4, seed=0)
        cfg = dataclasses.replace(_cfg(steps, lr=1e-2), schedule="constant", warmup_steps=0)
        train(stage, cfg, out, resume=resume)
        return {k: v.detach().clone() for k, v in peft.adapter_state(model).items()}

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6, resume=True)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
