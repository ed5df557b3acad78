"""GPT-1 task fine-tuning: the head reads the extract token, similarity is order-free, multiple
choice softmaxes across answers, training reaches high accuracy on a learnable task, the saved
directory loads back, and bad JSONL lines are named by file:line."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import DataError
from pocketgpt.model import peft
from pocketgpt.model.gpt import GPT
from pocketgpt.text import formats, specials
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.train.finetune import (
    TaskModel,
    collate_tasks,
    evaluate_task_model,
    finetune_stage,
    load_task_model,
    read_task_file,
    task_loss,
)
from pocketgpt.train.loop import TrainConfig, train

GOOD, BAD = ["great", "fine", "好"], ["awful", "poor", "坏"]
FILLER = ["the", "film", "was", "very", "plot", "电影", "很"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    text = " ".join(GOOD + BAD + FILLER) * 10
    return Tokenizer.train(text, 256 + len(specials.RESERVED) + 20, special_tokens=specials.RESERVED, progress=False)


def _gpt(tok, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=2, d_model=32))


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _sentiment(n, seed) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, 3) + [rng.choice(GOOD if label == "pos" else BAD)]
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": label})
    return out


def _model(tok, kind, n_classes=2):
    return TaskModel(_gpt(tok), kind, n_classes, tok.special_tokens[specials.EXTRACT], dropout=0.0).eval()


def test_head_reads_the_extract_token_and_ignores_padding(tok):
    m = _model(tok, "classification")
    ex = formats.encode_task("classification", {"text": "the film was great"}, tok)
    x, _ = collate_tasks([ex], pad_id=formats.pad_id_of(tok))
    padded = torch.cat([x, torch.full((1, 1, 5), formats.pad_id_of(tok))], dim=2)
    assert torch.allclose(m(x), m(padded), atol=1e-6)
    h = m.gpt.hidden(x[:, 0])  # (1, T, C): the reference read by hand at the last position
    assert torch.allclose(m(x), m.head.proj(h[:, -1]), atol=1e-6)


def test_similarity_is_symmetric_and_multiple_choice_softmaxes_answers(tok):
    m = _model(tok, "similarity")
    a = formats.encode_task("similarity", {"text_a": "the film", "text_b": "very poor"}, tok)
    b = formats.encode_task("similarity", {"text_a": "very poor", "text_b": "the film"}, tok)
    xa, _ = collate_tasks([a], 0)
    xb, _ = collate_tasks([b], 0)
    assert torch.allclose(m(xa), m(xb), atol=1e-6)  # both orders, added: order-free
    mc = _model(tok, "multiple-choice")
    exs = [formats.encode_task("multiple-choice", {"context": "the film was", "choices": c, "label": 1}, tok)
           for c in (["great", "awful", "fine"], ["poor", "good", "very"])]
    x, y = collate_tasks(exs, 0)
    logits = mc(x)
    assert logits.shape == (2, 3)
    loss, _ = task_loss(mc, (x, y), aux_weight=0.0)
    assert torch.allclose(loss, F.cross_entropy(logits, y))


def test_aux_lm_loss_is_added_with_its_weight(tok):
    m = _model(tok, "classification")
    ex = formats.encode_task("classification", {"text": "the film was great", "label": "pos"}, tok, labels=["neg", "pos"])
    x, y = collate_tasks([ex, ex], formats.pad_id_of(tok))
    plain, _ = task_loss(m, (x, y), aux_weight=0.0)
    both, extra = task_loss(m, (x, y), aux_weight=0.5)
    lm = m.gpt(x[:, 0, :-1], x[:, 0, 1:])  # the GPT's own next-token loss as the reference
    assert torch.allclose(both, plain + 0.5 * lm, atol=1e-5) and extra["lm_loss"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", [None, "lora"])
def test_finetune_learns_sentiment_and_round_trips(tok, tmp_path, method):
    _write(tmp_path / "train.jsonl", _sentiment(200, 0))
    _write(tmp_path / "val.jsonl", _sentiment(40, 1))
    tr, labels = read_task_file(tmp_path / "train.jsonl", "classification", tok, labels=None, max_len=48)
    va, _ = read_task_file(tmp_path / "val.jsonl", "classification", tok, labels=labels, max_len=48)
    gpt = _gpt(tok)
    if method:
        peft.apply_lora(gpt, r=4, alpha=8)
    model = TaskModel(gpt, "classification", len(labels), tok.special_tokens[specials.EXTRACT])
    stage = finetune_stage(model, tok, tr, va, batch_size=16, labels=labels)
    cfg = TrainConfig(max_steps=60, batch_size=16, lr=3e-3 if not method else 1e-2, warmup_steps=5, eval_every=0,
                      ckpt_every=0, log_every=20, progress=False, device="cpu", eval_batches=2)
    train(stage, cfg, tmp_path / "out")
    pad = formats.pad_id_of(tok)
    result = evaluate_task_model(model, va, pad)
    assert result["accuracy"] >= 0.9, result
    assert sum(map(sum, result["confusion"])) == 40
    back, _, meta = load_task_model(tmp_path / "out")
    assert meta["labels"] == ["neg", "pos"]
    assert evaluate_task_model(back, va, pad)["confusion"] == result["confusion"]


def test_bad_lines_are_named_and_skipped_on_request(tok, tmp_path):
    path = tmp_path / "d.jsonl"
    good = _sentiment(4, 0)
    path.write_text(json.dumps(good[0]) + "\n{not json\n" + json.dumps({"txt": "x", "label": "pos"}) + "\n\n"
                    + "".join(json.dumps(r) + "\n" for r in good[1:]), encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid JSON"):
        read_task_file(path, "classification", tok, labels=None, max_len=48)
    data, labels = read_task_file(path, "classification", tok, labels=None, max_len=48, on_error="skip")
    assert len(data.examples) == 4 and len(data.problems) == 2
    assert data.problems[1].startswith(f"{path}:3:") and "'text' is missing" in data.problems[1]
