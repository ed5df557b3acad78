"""`pocketgpt pretrain` end to end on a small text: data preparation (clean -> tokenizer -> shards,
cached), training through the loop, resume, samples, and the errors that protect earlier work."""

from __future__ import annotations

import json

import pytest

SMALL = ["--preset", "tiny", "--n-layer", "1", "--d-model", "32", "--n-head", "2", "--block-size", "32",
         "--vocab-size", "320", "--batch-size", "4", "--eval-every", "10", "--eval-batches", "2", "--log-every", "5",
         "--warmup-steps", "2", "--max-minutes", "5", "--samples", "8", "--no-progress", "--json"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, corpora):
    """~40 KB of real text: the start of Austen and of People's Daily."""
    from pocketgpt.text.corpora import corpus_path

    parts = [corpus_path(name).read_text(encoding="utf-8")[:20_000] for name in ("austen", "peoples_daily")]
    path = tmp_path_factory.mktemp("data") / "mixed.txt"
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def test_pretrain_trains_saves_and_resumes(cli, text_file, tmp_path):
    out = tmp_path / "run"
    first = json.loads(cli("pretrain", *SMALL, "--data", str(text_file), "--max-steps", "20", "--out", str(out)).stdout)
    assert first["steps"] == 20 and first["stopped"] == "done"
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]
    config = json.loads((out / "config.json").read_text())
    assert config["n_layer"] == 1 and config["vocab_size"] <= 320 and config["eos_id"] >= 0
    assert (out / "pocketgpt-tokenizer.json").is_file() and (out / "train" / "loss.png").is_file()
    assert len(first["samples"]) >= 2  # English prompts, plus Chinese ones: the corpus had Chinese
    from pocketgpt.train.loop import cpu_has_bf16

    run = json.loads((out / "train" / "run.json").read_text())  # dtype auto: bf16 where the CPU has it
    assert run["autocast"] == ("bfloat16" if cpu_has_bf16() else "off (fp32)")
    more = json.loads(cli("pretrain", *SMALL, "--data", str(text_file), "--max-steps", "30", "--out", str(out),
                          "--resume").stdout)
    assert more["steps"] == 30
    generated = cli("generate", str(out), "It is", "--max-tokens", "5", "--seed", "1", "--json")
    assert json.loads(generated.stdout)


def test_pretrain_refuses_to_overwrite_and_other_configs(cli, text_file, tmp_path):
    out = tmp_path / "run"
    cli("pretrain", *SMALL, "--data", str(text_file), "--max-steps", "3", "--out", str(out))
    again = cli("pretrain", *SMALL, "--data", str(text_file), "--max-steps", "3", "--out", str(out), check=False)
    assert again.returncode == 2 and "--resume" in again.stderr
    other = cli("pretrain", *SMALL, "--n-layer", "2", "--data", str(text_file), "--max-steps", "6", "--out", str(out),
                "--resume", check=False)
    assert other.returncode == 2 and "n_layer" in other.stderr


def test_pretrain_bad_data(cli, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    res = cli("pretrain", *SMALL, "--data", str(empty), "--out", str(tmp_path / "e"), check=False)
    assert res.returncode == 2 and "empty" in res.stderr
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    res = cli("pretrain", *SMALL, "--data", str(binary), "--out", str(tmp_path / "b"), check=False)
    assert res.returncode == 2 and "UTF-8" in res.stderr
    res = cli("pretrain", *SMALL, "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "m"), check=False)
    assert res.returncode == 2 and "no such file" in res.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "b").exists()


def test_pretrain_help_lists_every_config_field(cli):
    text = cli("pretrain", "--help").stdout
    for flag in ("--n-layer", "--d-model", "--positions", "--lr", "--grad-accum", "--max-minutes", "--fsdp", "example"):
        assert flag in text
