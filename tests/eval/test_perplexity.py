"""Perplexity with sliding windows, checked against a hand loop that runs the model once per
token, and bits per byte against the closed form of a uniform model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pocketgpt.config import ModelConfig
from pocketgpt.errors import DataError
from pocketgpt.eval.perplexity import evaluate_lm, score_tokens, sliding_windows
from pocketgpt.model.checkpoint import save_model
from pocketgpt.model.gpt import GPT
from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.ngram import NGramModel, split_units

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
) * 3


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(TEXT, 300, progress=False)


def tiny_model(vocab_size: int, block_size: int = 8, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, d_model=16, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # sharper than the 0.02-std init, so context matters to the scores
        for p in model.parameters():
            p.mul_(20.0)
    return model


def reference_nats(model: GPT, ids: list[int], stride: int) -> float:
    """Independent: one forward per token; target t sees ids[b:t], where b is the start of the
    first window (starts at multiples of stride, block_size long) that reaches t."""
    block, total = model.config.block_size, 0.0
    for t in range(1, len(ids)):
        b = max(0, math.ceil((t - block) / stride)) * stride
        logits = model(torch.tensor([ids[b:t]]))[0, -1]  # (V,)
        total -= F.log_softmax(logits.double(), dim=-1)[ids[t]].item()
    return total


@pytest.mark.parametrize("n,block,stride", [(2, 4, 1), (10, 4, 2), (17, 5, 5), (40, 8, 3), (5, 8, 4)])
def test_windows_score_every_position_once(n: int, block: int, stride: int) -> None:
    scored = []
    for w in sliding_windows(n, block, stride):
        assert 0 < w.end - w.begin <= block and w.begin < w.first_scored <= w.end
        scored.extend(range(w.first_scored, w.end + 1))
    assert scored == list(range(1, n))


@pytest.mark.parametrize("stride,batch", [(1, 4), (3, 1), (3, 16), (8, 2)])
@pytest.mark.parametrize("flavour", [{}, {"positions": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False}])
def test_windows_match_one_token_at_a_time(tok: Tokenizer, stride: int, batch: int, flavour: dict) -> None:
    model = tiny_model(tok.vocab_size, **flavour)
    ids = [tok.eot_id] + tok.encode(TEXT[:60])
    total, count = score_tokens(model, ids, stride=stride, batch_size=batch)
    assert count == len(ids) - 1
    assert total == pytest.approx(reference_nats(model, ids, stride), rel=1e-5)


def test_uniform_model_bits_per_byte_is_log2_vocab(tok: Tokenizer) -> None:
    model = tiny_model(tok.vocab_size, block_size=16)
    with torch.no_grad():
        model.tok_emb.weight.zero_()  # tied with lm_head: every logit is 0, so P = 1/V everywhere
    row = evaluate_lm(model, tok, TEXT, stride=5)
    n_tokens, n_bytes = len(tok.encode(TEXT)), len(TEXT.encode("utf-8"))
    assert row["tokens"] == n_tokens  # <|endoftext|> in front: every text token is scored
    assert row["bits_per_byte"] == pytest.approx(math.log2(tok.vocab_size) * n_tokens / n_bytes, rel=1e-6)
    assert row["perplexity"] == pytest.approx(tok.vocab_size, rel=1e-5)


def test_bad_stride_is_a_data_error() -> None:
    with pytest.raises(DataError, match="stride"):
        sliding_windows(10, 4, 5)


def test_cli_model_and_ngram_rows(tok: Tokenizer, tmp_path, cli) -> None:
    model = tiny_model(tok.vocab_size, block_size=16)
    save_model(model, tmp_path / "m", tok)
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    train.write_text(TEXT, encoding="utf-8")
    held.write_text("床前明月光，低头思故乡。\nIt is a truth.\n", encoding="utf-8")
    out = cli("eval", str(tmp_path / "m"), f"ngram:2:add-k=0.5@{train}", f"ngram:2:word@{train}",
              "--data", str(held), "--stride", "4", "--json")
    res = json.loads(out.stdout)
    text = held.read_text(encoding="utf-8")
    gpt, smoothed, unsmoothed = res["rows"]
    assert gpt["bits_per_byte"] == pytest.approx(evaluate_lm(model, tok, text, stride=4)["bits_per_byte"], rel=1e-5)
    ng = NGramModel(2, 0.5).fit(split_units(TEXT)).perplexity(split_units(text), n_bytes=len(text.encode()))
    assert smoothed["bits_per_byte"] == pytest.approx(ng["bits_per_byte"])
    assert unsmoothed["unit"] == "word" and unsmoothed["perplexity"] is None and unsmoothed["zero_prob_events"] > 0
    human = cli("eval", str(tmp_path / "m"), "--data", str(held), "--max-tokens", "5").stdout
    assert "bits/byte" in human


def test_cli_rejects_bad_ngram_spec(tmp_path, cli) -> None:
    (tmp_path / "t.txt").write_text("abc\n", encoding="utf-8")
    proc = cli("eval", "ngram:x@austen", "--data", str(tmp_path / "t.txt"), check=False)
    assert proc.returncode == 2 and "ngram:N" in proc.stderr
