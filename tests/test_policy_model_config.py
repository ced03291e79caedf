"""config.json parsing: supported families, both RoPE spellings, and errors that name the field."""
from __future__ import annotations

import math

import pytest
import torch

from red_megatron.hf.config import read_hf_config, rope_inv_freq


def _qwen25_1p5b() -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536,
            "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
            "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False,
            "max_position_embeddings": 4096}


def test_qwen25_shape_params_and_padding():
    hf = read_hf_config(_qwen25_1p5b())
    assert (hf.family, hf.head_dim, hf.qkv_bias, hf.qk_norm) == ("qwen2", 128, True, False)
    assert 1.50e9 < hf.num_params() < 1.56e9  # Qwen2.5-1.5B: 1.54 B parameters
    assert hf.padded_vocab_size(1) == 151936 and hf.padded_vocab_size(2) == 152064
    assert hf.padded_vocab_size(4) % 512 == 0


def test_transformers5_rope_parameters_spelling_is_read():
    d = _qwen25_1p5b()
    d.pop("rope_theta")
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    assert read_hf_config(d).rope_theta == 1e6


def test_llama3_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                      num_hidden_layers=2, vocab_size=1000, rope_theta=500000.0, rope_scaling=scaling,
                      max_position_embeddings=131072, architectures=["LlamaForCausalLM"])
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours = rope_inv_freq(read_hf_config(cfg))
    assert torch.equal(ours, ref)
    plain = rope_inv_freq(read_hf_config({**cfg.to_dict(), "rope_scaling": None,
                                          "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}))
    assert not torch.equal(plain, ref)


@pytest.mark.parametrize("edit,field", [
    ({"architectures": ["MistralForCausalLM"]}, "architectures"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling.low_freq_factor"),
    ({"num_key_value_heads": 5}, "num_key_value_heads"),
    ({"model_type": "llama"}, "model_type"),
])
def test_unsupported_options_name_the_field(edit, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        read_hf_config({**_qwen25_1p5b(), **edit})


def test_llama_attention_bias_is_refused():
    d = {**_qwen25_1p5b(), "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": True}
    with pytest.raises(ValueError, match="attention_bias"):
        read_hf_config(d)


def test_missing_required_field_is_named():
    d = _qwen25_1p5b()
    d.pop("intermediate_size")
    with pytest.raises((ValueError, KeyError), match="intermediate_size"):
        read_hf_config(d)
    assert math.isfinite(read_hf_config(_qwen25_1p5b()).rope_theta)
