"""Modelfile ADAPTER: a LoRA adapter stored with its base, applied when the model loads, and an
adapter trained on another base refused (at create, and at load for a manifest made elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pocketgpt.cli import main as cli
from pocketgpt.errors import ConfigMismatch
from pocketgpt.infer.engine import Engine
from pocketgpt.infer.sampling import SamplingParams
from pocketgpt.model.checkpoint import load_model
from pocketgpt.model.peft import apply_lora, save_tuned
from pocketgpt.serve.loaded import load_store_model
from pocketgpt.serve.modelfile import Modelfile, ModelfileError
from pocketgpt.serve.store import Store
from tests.serve.tiny_store import make_tiny_model

pytestmark = pytest.mark.serve
PROMPT = "It is a truth 周一上班"


def make_lora(base_dir: Path, out: Path, seed: int = 0) -> Path:
    """A LoRA adapter directory as `pocketgpt sft --peft lora --out DIR` writes it (base files +
    adapter.safetensors + adapter.json), with a non-zero update so it changes what the model says."""
    model, tok = load_model(base_dir)
    apply_lora(model, targets=("attn.qkv", "attn.proj", "mlp.fc"), r=4, alpha=8, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_tuned(model, out, tok)


def greedy(model, tok, prompt: str = PROMPT, n: int = 12) -> list[int]:
    ids = tok.encode(prompt)
    stop = tuple(
        i for i in (tok.special_tokens.get("<|endoftext|>"), model.config.eos_id) if i is not None and i >= 0
    )
    engine = Engine(model, tok, max_batch=1, max_len=len(ids) + n + 1)
    handle = engine.submit(ids, SamplingParams(max_tokens=n, temperature=0.0, stop_ids=stop))
    while engine.step():
        pass
    return handle.result().tokens


@pytest.fixture(scope="module")
def lora_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(tiny_dir, tmp_path_factory.mktemp("lora") / "lora")


def test_adapter_model_answers_like_generate_on_the_adapter_directory(tiny_dir, lora_dir, tmp_path, capsys):
    store = Store(tmp_path / "store")
    store.create_from_dir("tiny", tiny_dir)
    m = store.create("tiny-lora", Modelfile.parse(f"FROM tiny\nADAPTER {lora_dir}\n"))
    assert m.adapter is not None and "adapter.json" in m.file_layers()
    d = store.materialize("tiny-lora")
    for name in ("adapter.safetensors", "adapter.json"):
        assert (d / name).read_bytes() == (lora_dir / name).read_bytes()
    assert (d / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()

    loaded = load_store_model(store, "tiny-lora")
    assert cli(["generate", str(lora_dir), PROMPT, "--temperature", "0", "--max-tokens", "12", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["tokens"]
    assert greedy(loaded.model, loaded.tokenizer) == expected

    base = load_store_model(store, "tiny")  # the adapter really changes the model
    ids = torch.tensor([loaded.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        assert (loaded.model(ids) - base.model(ids)).abs().max() > 1e-2

    # the adapter travels with the model: FROM tiny-lora keeps it, a new ADAPTER replaces it
    assert (
        store.create("tiny-lora-chat", Modelfile.parse('FROM tiny-lora\nSYSTEM "简洁"\n')).adapter
        == m.adapter
    )
    other = make_lora(tiny_dir, tmp_path / "other", seed=1)
    swapped = store.create("tiny-other", Modelfile.parse(f"FROM tiny-lora\nADAPTER {other}\n"))
    assert swapped.adapter not in (None, m.adapter)
    assert sum(x.get("name") == "adapter.json" for x in swapped.layers) == 1


def test_an_adapter_for_another_base_is_refused(tiny_dir, lora_dir, tmp_path):
    other_base = make_tiny_model(tmp_path / "other-base", vocab_size=300)  # another vocabulary
    stranger = make_lora(other_base, tmp_path / "stranger")
    store = Store(tmp_path / "store")
    with pytest.raises(
        ModelfileError, match="trained on a base model with config hash .* only works on the model"
    ):
        store.create("bad", Modelfile.parse(f"FROM {tiny_dir}\nADAPTER {stranger}\n"))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "adapter.safetensors").write_bytes((lora_dir / "adapter.safetensors").read_bytes())
    with pytest.raises(ModelfileError, match="no adapter.json"):
        store.create("bad", Modelfile.parse(f"FROM {tiny_dir}\nADAPTER {tmp_path / 'bare'}\n"))
    assert store.names() == []

    # a manifest made elsewhere (e.g. pulled) pairing these weights with the stranger's adapter
    good = store.create("good", Modelfile.parse(f"FROM {tiny_dir}\nADAPTER {lora_dir}\n")).to_json()
    swap = {
        "adapter.safetensors": store.add_blob(stranger / "adapter.safetensors"),
        "adapter.json": store.add_blob(stranger / "adapter.json"),
    }
    layers = [
        dict(x, digest=swap[x["name"]], size=(stranger / x["name"]).stat().st_size)
        if x.get("name") in swap
        else x
        for x in good["layers"]
    ]
    store.put_manifest("mixed", {**good, "layers": layers})
    with pytest.raises(ConfigMismatch, match="model mixed:latest: its ADAPTER does not fit its weights"):
        load_store_model(store, "mixed")
