"""BPE on the real default corpora (small slices), transformers' GPT-2 tokenizer on our files,
and the benchmark's `main` end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pocketgpt.text.bpe import Tokenizer
from pocketgpt.text.bpe_reference import ReferenceEncoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_text(corpora) -> str:
    from pocketgpt.text.corpora import read_corpus

    return "\n".join(read_corpus(name)[:40_000] for name in ("austen", "peoples_daily", "tang"))


def test_train_on_real_corpora(real_text):
    tok = Tokenizer.train(real_text, 1024, progress=False)
    assert tok.decode(tok.encode(real_text)) == real_text
    ref = ReferenceEncoder(tok.ranks, tok.merges, tok.special_tokens, tok.pat_str)
    sample = real_text[:3000] + real_text[-3000:]
    assert ref.encode(sample) == tok.encode(sample)
    # a Chinese corpus makes common characters single tokens: fewer tokens than bytes
    zh = real_text[-3000:]
    assert len(tok.encode(zh)) < len(zh.encode("utf-8")) / 2


def test_transformers_gpt2_tokenizer_reads_our_files(real_text, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer.train(real_text, 800, progress=False)
    tok.save(tmp_path)
    # a local directory: from_pretrained reads vocab.json + merges.txt, no download
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    sample = real_text[:2000] + real_text[-1000:]
    assert hf(sample)["input_ids"] == tok.encode(sample)


def test_bench_main_prints_the_contract(corpora, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import tokenizer as bench  # bench/tokenizer.py

    assert bench.main(["--mb", "0.2", "--vocab-size", "400", "--repeat", "1"]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert [r["metric"] for r in lines] == ["train_seconds", "encode_mb_per_s"]
    for r in lines:
        assert set(r) == {"bench", "metric", "ours", "peer", "peer_value", "ratio", "goal"} and r["ratio"] > 0
