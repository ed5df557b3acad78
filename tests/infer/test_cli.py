"""`pocketgpt generate` runs on the engine (flags, JSON, stop strings); `pocketgpt predict` shows the
model's own next-token probabilities."""

from __future__ import annotations

import json

import torch

from pocketgpt.infer.engine import Engine
from pocketgpt.infer.sampling import SamplingParams
from pocketgpt.model.checkpoint import save_model
from tests.infer.helpers import tiny_gpt, zh_tokenizer


def _model_dir(tmp_path):
    tok = zh_tokenizer()
    model = tiny_gpt(vocab_size=tok.vocab_size, block_size=64)
    save_model(model, tmp_path / "m", tok)
    return tmp_path / "m", model, tok


def test_generate_json_matches_the_engine_and_honours_stop(tmp_path, cli):
    d, model, tok = _model_dir(tmp_path)
    args = ["generate", str(d), "周一上班", "--max-tokens", "12", "--seed", "4", "--json"]
    out = json.loads(cli(*args, "--min-p", "0.05", "--repetition-penalty", "1.3").stdout)
    params = SamplingParams(max_tokens=12, seed=4, min_p=0.05, repetition_penalty=1.3, stop_ids=(tok.eot_id,))
    want = Engine(model, tok).generate([tok.encode("周一上班")], params)[0]
    assert out["tokens"] == want.tokens and out["text"] == want.text
    assert out["completion_tokens"] == len(want.tokens) and out["finish_reason"] == want.finish_reason
    plain = json.loads(cli(*args).stdout)
    stop = plain["text"][3:5]
    cut = json.loads(cli(*args, "--stop", stop).stdout)
    assert cut["finish_reason"] == "stop" and cut["text"] == plain["text"][: plain["text"].find(stop)]


def test_predict_shows_the_models_probabilities(tmp_path, cli):
    d, model, tok = _model_dir(tmp_path)
    png = tmp_path / "next.png"
    out = json.loads(
        cli("predict", str(d), "周一上班真的很", "--top", "5", "--plot", str(png), "--json").stdout
    )
    with torch.no_grad():
        probs = model(torch.tensor([tok.encode("周一上班真的很")]))[0, -1].softmax(-1)
    want = probs.topk(5)
    assert [r["id"] for r in out["top"]] == want.indices.tolist()
    assert [round(r["prob"], 6) for r in out["top"]] == [round(p, 6) for p in want.values.tolist()]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    human = cli("predict", str(d), "周一上班真的很", "--top", "3").stdout
    assert "probability" in human and "█" in human
    bad = cli("predict", str(d), "x", "--top", "0", check=False)
    assert bad.returncode == 2 and "--top" in bad.stderr
