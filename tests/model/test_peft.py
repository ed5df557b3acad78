"""PEFT: LoRA against a hand-written x W^T + (alpha/r) x A^T B^T, merge/unmerge, prefix tuning
against the base model run on real tokens, prompt tuning against the base model on the prompt's
tokens typed out, adapter files and refusal of a different base."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from pocketgpt.config import ModelConfig
from pocketgpt.errors import ConfigMismatch, PocketError
from pocketgpt.model import peft
from pocketgpt.model.checkpoint import load_model, save_model
from pocketgpt.model.gpt import GPT

BASE = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, d_model=32)
FLAVOURS = {
    "gpt2": ModelConfig(**BASE),
    "llama": ModelConfig(**BASE, n_kv_head=2, d_ff=48, positions="rope", norm="rmsnorm", activation="swiglu",
                         bias=False, tie_embeddings=False),
}


def _model(name: str = "gpt2", seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    cfg = FLAVOURS[name].replace(**changes) if changes else FLAVOURS[name]
    return GPT(cfg).double().eval()


def _ids(B=2, T=10, seed=1):
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


def _randomize_b(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, peft.LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g, dtype=torch.float64) * 0.1)


# -- LoRA -------------------------------------------------------------------------------------------
def test_lora_linear_matches_the_formula_written_out():
    lin = nn.Linear(12, 20).double()
    W, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    lora = peft.LoRALinear(lin, r=4, alpha=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.lora_B.copy_(torch.randn(20, 4, dtype=torch.float64))
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    A, B = lora.lora_A.detach(), lora.lora_B.detach()
    want = x @ W.T + b + (8 / 4) * (x @ A.T @ B.T)  # the reference, by hand
    assert torch.allclose(lora(x), want, atol=1e-12)


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_lora_b_zero_leaves_outputs_unchanged(name):
    m = _model(name)
    idx = _ids()
    before = m(idx)
    swapped = peft.apply_lora(m, targets=("attn.qkv", "attn.proj", "mlp.fc"), r=4, alpha=8)
    assert len(swapped) == 3 * 2
    assert torch.equal(m(idx), before)  # B = 0: exactly the base model


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_merge_equals_unmerged_and_unmerge_restores(name):
    m = _model(name)
    base_weights = {n: p.detach().clone() for n, p in m.state_dict().items()}
    peft.apply_lora(m, r=4, alpha=16)
    _randomize_b(m)
    idx = _ids()
    unmerged = m(idx)
    assert not torch.allclose(unmerged, _model(name)(idx))  # the adapter does something
    peft.merge_lora(m)
    assert torch.allclose(m(idx), unmerged, atol=1e-10)
    peft.unmerge_lora(m)
    for n, p in m.state_dict().items():
        if n in base_weights:
            assert torch.allclose(p, base_weights[n], atol=1e-6), n


def test_only_adapter_params_require_grad_and_get_gradients(capsys):
    m = _model()
    peft.apply_lora(m, r=8, alpha=16)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    _randomize_b(m)
    m.train()
    m(_ids(), _ids(seed=2)).backward()
    for n, p in m.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    t, total = peft.parameter_counts(m)
    print(peft.describe(m))
    assert t == 2 * (8 * 32 + 96 * 8 + 8 * 32 + 32 * 8)
    assert total == sum(p.numel() for p in _model().parameters()) + t
    assert "trainable" in capsys.readouterr().out


def test_tied_head_stays_tied_and_unknown_targets_are_refused():
    m = _model()
    peft.apply_lora(m, targets=("attn.qkv",))
    assert m.lm_head.weight is m.tok_emb.weight
    with pytest.raises(PocketError, match="choose from"):
        peft.apply_lora(_model(), targets=("attn.nope",))


def test_lora_gradient_matches_finite_difference():
    m = _model()
    peft.apply_lora(m, r=2, alpha=4)
    _randomize_b(m)
    idx, y = _ids(), _ids(seed=5)
    m(idx, y).backward()
    lora = m.blocks[0].attn.qkv
    with torch.no_grad():
        eps = 1e-6
        lora.lora_A[0, 0] += eps
        up = m(idx, y).item()
        lora.lora_A[0, 0] -= 2 * eps
        down = m(idx, y).item()
        lora.lora_A[0, 0] += eps
    assert abs((up - down) / (2 * eps) - lora.lora_A.grad[0, 0].item()) < 1e-6


# -- prefix tuning ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FLAVOURS))
def test_prefix_is_remembered_keys_and_values(name):
    """With prefixes set to the K/V of real tokens p, the prefixed model on x equals the base model on
    p + x (positions 'none', so moving x does not change it): the independent reference."""
    m = _model(name, positions="none")
    base = _model(name, positions="none")
    p, x = _ids(B=1, T=5, seed=7)[0], _ids(B=2, T=8)
    peft.apply_prefix(m, n_virtual=5)
    peft.prefix_from_tokens(m, p)
    want = base(torch.cat([p.expand(2, -1), x], dim=1))[:, 5:]
    assert torch.allclose(m(x), want, atol=1e-10)


def test_prefix_cached_generation_and_padding_match_the_full_forward():
    m = _model("llama")
    peft.apply_prefix(m, n_virtual=3)
    x = _ids(B=1, T=9)
    full = m(x)
    cache = m.new_cache(1)
    steps = [m(x[:, :4], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(4, 9)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 9)], dim=1).long()
    assert torch.allclose(m(padded, attention_mask=mask)[:, 3:], full, atol=1e-10)


def test_prefix_gradient_flows_only_into_prefixes():
    m = _model()
    peft.apply_prefix(m, n_virtual=4)
    before = _model()(_ids())
    assert not torch.allclose(m(_ids()), before)  # prefixes attend: not zero-effect (see docs)
    m.train()
    m(_ids(), _ids(seed=2)).backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None}
    assert got == {f"blocks.{i}.attn.prefix.{kv}" for i in range(2) for kv in "kv"}
    assert all(m.blocks[i].attn.prefix.k.grad.abs().sum() > 0 for i in range(2))


# -- prompt tuning ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FLAVOURS))
def test_prompt_equals_typing_the_prompt_tokens(name):
    """Soft prompts set to the embeddings of real tokens p: the model on x equals the base model on
    p + x with the first P positions dropped, so positions shift by P exactly as typed text would."""
    m, base = _model(name), _model(name)
    p, x = _ids(B=1, T=4, seed=9)[0], _ids(B=2, T=8)
    peft.apply_prompt(m, n_virtual=4)
    with torch.no_grad():
        m.tok_emb.prompt.copy_(base.tok_emb.weight[p])
    want = base(torch.cat([p.expand(2, -1), x], dim=1))[:, 4:]
    assert torch.allclose(m(x), want, atol=1e-10)
    y = _ids(B=2, T=8, seed=4)
    assert torch.allclose(m(x, y), base(torch.cat([p.expand(2, -1), x], 1), torch.cat([torch.full((2, 4), -1), y], 1)))


def test_prompt_cached_decoding_and_gradients():
    m = _model("llama")
    peft.apply_prompt(m, n_virtual=3)
    x = _ids(B=1, T=7)
    full = m(x)
    cache = m.new_cache(1)
    steps = [m(x[:, :3], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(3, 7)]
    assert cache.pos == 3 + 7
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)
    m.train()
    m(x, x).backward()
    assert [n for n, p in m.named_parameters() if p.grad is not None] == ["tok_emb.prompt"]
    assert m.lm_head.weight is m.tok_emb.weight or not m.config.tie_embeddings


# -- files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", peft.METHODS)
def test_adapter_round_trip_and_base_directory_unchanged(tmp_path, method):
    m = _model()
    save_model(m, tmp_path / "base")
    peft.attach(m, peft.PeftConfig(method, r=4, n_virtual=3), seed=1)
    with torch.no_grad():
        for p in peft.adapter_state(m).values():
            p.add_(torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(0)) * 0.1)
    idx = _ids()
    want = m(idx)
    with peft.detached(m):  # the base model files are a plain model directory
        save_model(m, tmp_path / "tuned")
    peft.save_adapter(m, tmp_path / "tuned")
    assert torch.allclose(m(idx), want)  # detaching restored the adapter
    plain, _ = load_model(tmp_path / "tuned", adapter=False)  # strict load: no adapter tensors leaked in
    assert torch.allclose(plain.double()(idx), _model()(idx), atol=1e-6)
    tuned, _ = load_model(tmp_path / "tuned", dtype=torch.float64)  # load_model sees adapter.json
    assert torch.allclose(tuned(idx), want, atol=1e-5)
    back, _ = peft.load_model_with_adapter(tmp_path / "tuned", dtype=torch.float64, merge=True)
    assert torch.allclose(back(idx), want, atol=1e-5)  # base weights were stored as fp32
    if method == "lora":  # merged: plain Linear layers again, so the engine's fast path applies
        assert not any(isinstance(mod, peft.LoRALinear) for mod in back.modules())
    adapter_only = tmp_path / "only"
    peft.save_adapter(m, adapter_only, base=str(tmp_path / "base"))
    again, _ = peft.load_model_with_adapter(adapter_only, dtype=torch.float64, merge=False)
    assert torch.allclose(again(idx), want, atol=1e-5)
    via_base, _ = load_model(adapter_only, dtype=torch.float64)  # no config.json: the base named in adapter.json
    assert torch.allclose(via_base(idx), want, atol=1e-5)


def test_adapter_for_a_different_base_is_refused(tmp_path):
    m = _model()
    peft.apply_lora(m)
    peft.save_adapter(m, tmp_path)
    other = GPT(FLAVOURS["gpt2"].replace(d_model=48)).double()
    with pytest.raises(ConfigMismatch, match="config hash"):
        peft.load_adapter(other, tmp_path)
    save_model(other, tmp_path / "other")  # an adapter-only directory naming the wrong base
    peft.save_adapter(m, tmp_path / "stray", base=str(tmp_path / "other"))
    with pytest.raises(ConfigMismatch, match=r"config hash \w+, but the model has \w+ .*names .*other"):
        load_model(tmp_path / "stray")
    same = _model(seed=5)
    peft.load_adapter(same, tmp_path)  # same config: accepted
    (tmp_path / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigMismatch, match="corrupt"):
        peft.load_adapter(_model(), tmp_path)


def test_strip_merges_lora_and_refuses_merging_prefix():
    m = _model()
    peft.apply_lora(m)
    _randomize_b(m)
    idx = _ids()
    want = m(idx)
    peft.strip(m)
    assert peft.peft_config(m) is None and torch.allclose(m(idx), want, atol=1e-10)
    p = _model()
    peft.apply_prefix(p, 2)
    with pytest.raises(PocketError, match="cannot be merged"):
        peft.strip(p)


# -- the engine runs adapters -----------------------------------------------------------------------
def _greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("method", peft.METHODS)
def test_engine_generates_with_an_adapter_like_a_plain_greedy_loop(tmp_path, method):
    from pocketgpt.infer.engine import Engine
    from pocketgpt.infer.sampling import SamplingParams

    m = _model("llama" if method != "prompt" else "gpt2").float()
    peft.attach(m, peft.PeftConfig(method, r=4, n_virtual=3), seed=2)
    with torch.no_grad():
        for p in peft.adapter_state(m).values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    peft.save_tuned(m, tmp_path)
    tuned, _ = peft.load_model_with_adapter(tmp_path)
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9], [10]]
    done = Engine(tuned, None, max_batch=4).generate(prompts, SamplingParams(max_tokens=6, temperature=0.0))
    assert [c.tokens for c in done] == [_greedy(m.eval(), p, 6) for p in prompts]


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_prompt_as_prefix_is_the_same_model(name):
    m = _model(name)
    peft.apply_prompt(m, n_virtual=4, seed=3)
    x = _ids()
    want = m(x)
    peft.prompt_as_prefix(m)
    assert not isinstance(m.tok_emb, peft.SoftPromptEmbedding)
    assert torch.allclose(m(x), want, atol=1e-10)
    assert torch.allclose(m.lm_head(m.hidden(x)), want, atol=1e-10)  # hidden() sees it now
