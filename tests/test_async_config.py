"""The validator's rules for disaggregated engines and bounded staleness (config.check_layout via
rollout/placement.check_engines), and the options' own checks: one ValueError naming the fields."""
from __future__ import annotations

import dataclasses

import pytest

from red_megatron.algo.config import AlgoConfig
from red_megatron.config import RunConfig, check_layout
from red_megatron.data.dataset import DataConfig
from red_megatron.rollout.config import RolloutConfig


def _cfg(**rollout) -> RunConfig:
    return RunConfig(model_dir="unused", data=DataConfig(path="unused.parquet", max_prompt_tokens=64,
                                                         max_response_tokens=32, global_batch_size=4),
                     rollout=RolloutConfig(max_model_len=128, **rollout))


def test_disaggregated_layouts_pass():
    assert check_layout(_cfg(placement="disaggregated", num_engines=2, max_staleness=1), 2) == 2
    assert check_layout(_cfg(placement="disaggregated", max_staleness=2, partial=True), 1) == 1
    # a tensor-parallel engine is a torchrun group of its own: any trainer world size
    assert check_layout(_cfg(placement="disaggregated", tp_infer=2, executor="external_launcher"), 1) == 1
    assert check_layout(_cfg(), 1) == 1


@pytest.mark.parametrize("rollout,match", [
    (dict(max_staleness=1), r"rollout.max_staleness=1 needs rollout.placement='disaggregated'"),
    (dict(num_engines=2), r"rollout.num_engines=2 is for rollout.placement='disaggregated'"),
    (dict(placement="disaggregated", executor="external_launcher"), r"needs rollout.executor='uni'"),
    (dict(placement="disaggregated", num_engines=5), r"rollout.num_engines=5 exceeds data.global_batch_size=4"),
    (dict(partial=True, max_staleness=1), r"rollout.partial=true needs rollout.placement='disaggregated'"),
    (dict(placement="disaggregated", partial=True), r"rollout.partial=true needs .* rollout.max_staleness >= 1"),
    (dict(engine_launch="external"), r"rollout.engine_launch='external' needs rollout.placement='disaggregated'"),
    (dict(placement="disaggregated", engine_launch="external", engine_devices="3"),
     r"rollout.engine_devices='3' is for engines rank 0 starts"),
])
def test_refused_layouts_name_the_fields(rollout, match):
    with pytest.raises(ValueError, match=match):
        check_layout(_cfg(**rollout), 1)


def test_engine_devices():
    from red_megatron.rollout.pool import engine_env

    r = RolloutConfig(placement="disaggregated", num_engines=2, engine_devices="6, 7")
    assert engine_env(0, r) == {"CUDA_VISIBLE_DEVICES": "6"} and engine_env(1, r) == {"CUDA_VISIBLE_DEVICES": "7"}
    assert engine_env(0, RolloutConfig()) == {}
    with pytest.raises(ValueError, match="rollout.engine_devices='3' is for rollout.placement='disaggregated'"):
        check_layout(_cfg(engine_devices="3"), 1)


def test_masking_stale_tokens_needs_the_off_policy_weights():
    cfg = _cfg(placement="disaggregated", max_staleness=1, partial=True, stale_samples="mask")
    assert check_layout(cfg, 1) == 1
    with pytest.raises(ValueError, match="rollout.stale_samples='mask' .* needs algo.off_policy 'auto' or 'tis'"):
        check_layout(dataclasses.replace(cfg, algo=AlgoConfig(off_policy="none")), 1)


def test_replay_needs_colocated():
    cfg = dataclasses.replace(_cfg(placement="disaggregated"), replay_experience_dir="somewhere")
    with pytest.raises(ValueError, match="replay_experience_dir .* rollout.placement='colocated'"):
        check_layout(cfg, 1)


@pytest.mark.parametrize("kw,match", [
    (dict(placement="remote"), "RolloutConfig.placement must be one of"),
    (dict(num_engines=0), "RolloutConfig.num_engines must be an int >= 1"),
    (dict(max_staleness=-1), "RolloutConfig.max_staleness must be an int >= 0"),
    (dict(timeout_s=0), "RolloutConfig.timeout_s must be > 0"),
    (dict(num_engines=2, engine_devices="6"), r"RolloutConfig.engine_devices='6': expected 2 comma-separated"),
    (dict(num_engines=2, tp_infer=2, executor="external_launcher", engine_devices="4,5,6"),
     r"engine_devices='4,5,6': expected 4 comma-separated device ids, tp_infer=2 per engine"),
    (dict(engine_devices="gpu0"), r"RolloutConfig.engine_devices='gpu0'"),
    (dict(partial="yes"), r"RolloutConfig.partial must be a bool"),
    (dict(engine_launch="ssh"), r"RolloutConfig.engine_launch must be one of"),
    (dict(stale_samples="drop"), r"RolloutConfig.stale_samples must be one of"),
    (dict(listen_port=70000), r"RolloutConfig.listen_port must be an int in \[0, 65535\]"),
    (dict(partial_chunk_tokens=0), r"RolloutConfig.partial_chunk_tokens must be an int >= 1"),
])
def test_rollout_options(kw, match):
    with pytest.raises(ValueError, match=match):
        RolloutConfig(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(off_policy="is"), "AlgoConfig.off_policy='is'"),
    (dict(tis_cap=0), "algo.tis_cap must be >= 1"), (dict(tis_cap=0.5), "algo.tis_cap must be >= 1"),
    (dict(tis_mask_bound=1.0), "algo.tis_mask_bound must be None or > 1"),
])
def test_off_policy_options(kw, match):
    with pytest.raises(ValueError, match=match):
        AlgoConfig(**kw)
