import json

import pytest

from red_megatron.algo.config import AlgoConfig
from red_megatron.config import RunConfig, check_world
from red_megatron.data.dataset import DataConfig
from red_megatron.overrides import apply_overrides
from red_megatron.policy.config import PolicyConfig
from red_megatron.rollout.config import RolloutConfig


TINY_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 1024, "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "hidden_act": "silu"}


def _cfg(tmp_path, **kw):
    (tmp_path / "config.json").write_text(json.dumps(TINY_QWEN2))
    base = dict(model_dir=str(tmp_path), data=DataConfig(path="x.parquet", max_prompt_tokens=64,
                                                          max_response_tokens=32, global_batch_size=8),
                rollout=RolloutConfig(max_model_len=128))
    base.update(kw)
    return RunConfig(**base)


def test_valid_config_passes_world_checks(tmp_path):
    cfg = _cfg(tmp_path)
    check_world(cfg, 1)
    check_world(apply_overrides(cfg, ["policy.tp=2"]), 2)
    check_world(apply_overrides(cfg, ["policy.pp=2"]), 4)


@pytest.mark.parametrize("overrides,world,msg", [
    (["policy.tp=4"], 4, "policy.tp=4 must divide the checkpoint's num_key_value_heads=2"),
    (["policy.tp=2"], 3, "policy.tp=2 × policy.pp=1 must divide the world size 3"),
    (["data.global_batch_size=6"], 4, "global_batch_size=6 .* divisible by the data-parallel size 4"),
    (["policy.pp=4"], 4, "policy.pp=4 must divide the checkpoint's num_hidden_layers=2"),
    (["rollout.executor=external_launcher", "rollout.tp_infer=3", "data.global_batch_size=9"], 3,
     "rollout.tp_infer=3 must divide the checkpoint's num_attention_heads=4"),
    (["rollout.executor=external_launcher", "rollout.tp_infer=2"], 1, "rollout.tp_infer=2 must divide the world size 1"),
    (["rollout.max_model_len=1024", "data.max_response_tokens=900"], 1,
     "rollout.max_model_len=1024 exceeds the checkpoint's max_position_embeddings=512"),
])
def test_impossible_layouts_name_the_fields(tmp_path, overrides, world, msg):
    with pytest.raises(ValueError, match=msg):
        check_world(apply_overrides(_cfg(tmp_path), overrides), world)


def test_vllm_replicates_kv_heads_beyond_them(tmp_path):
    # 4 q heads, 2 KV heads: vLLM TP=4 replicates each KV head twice (megatron's TP may not exceed 2)
    check_world(apply_overrides(_cfg(tmp_path), ["rollout.executor=external_launcher", "rollout.tp_infer=4"]), 4)


def test_micro_batch_must_hold_the_longest_sequence(tmp_path):
    # the paper recipes had 8,192-token micro-batches for 1,024 + 8,192-token sequences: the first long
    # response raised inside plan_micro_batches mid-run; now the config is refused when it is made
    with pytest.raises(ValueError, match=r"policy.micro_batch_tokens=64 is below .* = 96"):
        _cfg(tmp_path, policy=PolicyConfig(micro_batch_tokens=64))
    with pytest.raises(ValueError, match="policy.micro_batch_tokens=8192 is below"):
        apply_overrides(_cfg(tmp_path, rollout=RolloutConfig(max_model_len=9216)),
                        ["data.max_prompt_tokens=1024", "data.max_response_tokens=8192", "policy.micro_batch_tokens=8192"])


def test_section_checks(tmp_path):
    with pytest.raises(ValueError, match="rollout.max_model_len=64 is below"):
        _cfg(tmp_path, rollout=RolloutConfig(max_model_len=64))
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        _cfg(tmp_path, steps=0)
    with pytest.raises(ValueError, match="num_online"):
        _cfg(tmp_path, algo=AlgoConfig(preset="grpo", num_online=1))
    with pytest.raises(ValueError, match="no config.json"):
        check_world(_cfg(tmp_path, model_dir=str(tmp_path / "missing")), 1)
    # sft has no online samples: the engine's length limit does not apply
    _cfg(tmp_path, algo=AlgoConfig(preset="sft"), rollout=RolloutConfig(max_model_len=64))
    assert _cfg(tmp_path, policy=PolicyConfig(tp=2)).policy.tp == 2


def test_fp32_lm_head_on_one_side_only_warns(tmp_path):
    import warnings

    base = _cfg(tmp_path)
    with pytest.warns(UserWarning, match=r"policy.lm_head_fp32=true but rollout.lm_head_fp32=false"):
        apply_overrides(base, ["policy.lm_head_fp32=true"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = apply_overrides(base, ["policy.lm_head_fp32=true", "rollout.lm_head_fp32=true"])
    assert both.policy.lm_head_fp32 and both.rollout.lm_head_fp32


def test_eval_in_training_fields(tmp_path):
    from red_megatron.config import EvalRunConfig

    with pytest.raises(ValueError, match=r"eval.every=2 needs eval.data_path"):
        EvalRunConfig(every=2)
    with pytest.raises(ValueError, match=r"eval.every must be an int >= 0"):
        apply_overrides(_cfg(tmp_path), ["eval.every=-1"])
    cfg = apply_overrides(_cfg(tmp_path), ["eval.data_path=e.parquet", "eval.every=5", "eval.periodic_limit=8",
                                            "eval.protocol.max_tokens=32"])
    assert (cfg.eval.every, cfg.eval.periodic_limit) == (5, 8)
