"""One home per config fact (issue 28, item 6): no dataclass outside the config sections restates their
fields (OptimSettings shadowed PolicyConfig's optimiser fields, ParallelConfig its layout fields), and the
loss scalars' defaults are the contract's."""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import red_megatron
from red_megatron.algo.config import AlgoConfig
from red_megatron.algo.contract import DEFAULT_PARAMS, LossParams
from red_megatron.config import EvalRunConfig, RunConfig
from red_megatron.data.dataset import DataConfig
from red_megatron.eval.protocol import EvalConfig
from red_megatron.metrics import MetricsConfig
from red_megatron.policy.config import PolicyConfig
from red_megatron.reward.scorer import RewardConfig
from red_megatron.rollout.config import RolloutConfig

SECTIONS = (RunConfig, EvalRunConfig, EvalConfig, AlgoConfig, DataConfig, PolicyConfig, RolloutConfig, RewardConfig,
            MetricsConfig)
# dataclasses that share field names with a section and are not a second home of its settings, and why
NOT_SHADOWS = {
    "red_megatron.algo.contract.LossParams": "the kernel contract's torch-only bundle, built from AlgoConfig by "
                                             "objective.build_objective; AlgoConfig's defaults are its defaults",
    "red_megatron.algo.objective.RedObjective": "the built objective (state and methods), not settings",
    "red_megatron.data.prepare.PrepareConfig": "scripts/prepare_data.py's conversion of a raw file, before any run",
    "red_megatron.rollout.sampling.SamplingConfig": "one engine call's sampling (training or evaluation fill it)",
    "red_megatron.study.probe.ProbeConfig": "the study's Table-1 probe of finished checkpoints",
}


def _dataclasses():
    for m in pkgutil.walk_packages(red_megatron.__path__, "red_megatron."):
        try:
            mod = importlib.import_module(m.name)
        except ImportError:  # an optional stack (vLLM, megatron) absent: its modules hold no config
            continue
        for _, c in inspect.getmembers(mod, inspect.isclass):
            if dataclasses.is_dataclass(c) and c.__module__ == mod.__name__ and c not in SECTIONS:
                yield c


def test_no_dataclass_restates_a_config_section():
    shadows = []
    for c in _dataclasses():
        fields = {f.name for f in dataclasses.fields(c)}
        for s in SECTIONS:
            common = fields & {f.name for f in dataclasses.fields(s)}
            if len(common) >= 3 and f"{c.__module__}.{c.__name__}" not in NOT_SHADOWS:
                shadows.append(f"{c.__module__}.{c.__name__} restates {s.__name__}: {sorted(common)}")
    assert not shadows, shadows


def test_the_loss_scalars_defaults_are_the_contracts():
    algo = AlgoConfig()
    for f in dataclasses.fields(LossParams):
        assert getattr(algo, f.name) == getattr(DEFAULT_PARAMS, f.name), f.name


def test_the_sampling_settings_sit_in_the_rollout_section():
    """top_p and refit_bucket_mb were RunConfig fields beside the rollout section (issue 28)."""
    from configs import get_recipe
    from red_megatron.overrides import apply_overrides
    from red_megatron.rollout.sampling import SamplingConfig

    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert not run_fields & {"top_p", "refit_bucket_mb"}
    cfg = apply_overrides(get_recipe("tiny_cpu"), ["rollout.top_p=0.9", "rollout.refit_bucket_mb=8"])
    assert SamplingConfig.from_run(cfg, online=True).top_p == 0.9 and cfg.rollout.refit_bucket_mb == 8
