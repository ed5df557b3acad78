from __future__ import annotations

import pytest

from pocketgpt.config import PRESETS, ModelConfig, get_preset
from pocketgpt.errors import ConfigMismatch


@pytest.mark.parametrize("name", list(PRESETS))
def test_json_round_trip(name):
    c = get_preset(name)
    assert ModelConfig.from_json(c.to_json()) == c


def test_replace_recomputes_derived_fields_unless_set_explicitly():
    c = get_preset("transformer-base").replace(n_head=2, d_model=32)
    assert (c.n_kv_head, c.head_dim, c.d_ff) == (2, 16, 128)
    llama = get_preset("tiny-llama")  # d_ff and n_kv_head were chosen, not derived
    small = llama.replace(d_model=64)
    assert small.d_ff == llama.d_ff and small.n_kv_head == llama.n_kv_head and small.head_dim == 16


def test_bad_values_name_the_field():
    with pytest.raises(ConfigMismatch, match="norm"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ConfigMismatch, match="n_kv_head"):
        ModelConfig(n_head=6, n_kv_head=4, d_model=96)
    with pytest.raises(ConfigMismatch, match="unknown config field"):
        ModelConfig.from_dict({"n_layers": 3})
    with pytest.raises(ConfigMismatch, match="known presets"):
        get_preset("gpt5")
