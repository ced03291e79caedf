import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from red_megatron.overrides import apply_overrides


@dataclass(kw_only=True)
class _Inner:
    tp: int = 1
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.95)
    wandb: str | None = None
    mode: Literal["seq_mean", "token_mean"] = "seq_mean"

    def __post_init__(self):
        if self.tp < 1:
            raise ValueError(f"inner.tp={self.tp}: expected >= 1")


@dataclass(kw_only=True)
class _Outer:
    name: str = "x"
    bf16: bool = False
    inner: _Inner = field(default_factory=_Inner)


def test_typed_overrides_apply_and_leave_original_alone():
    base = _Outer()
    cfg = apply_overrides(base, ["inner.tp=2", "inner.lr=2e-6", "bf16=true", "inner.betas=0.8,0.99",
                                 "inner.wandb=proj", "inner.mode=token_mean", "name=run a"])
    assert (cfg.inner.tp, cfg.inner.lr, cfg.bf16, cfg.inner.betas) == (2, 2e-6, True, (0.8, 0.99))
    assert (cfg.inner.wandb, cfg.inner.mode, cfg.name) == ("proj", "token_mean", "run a")
    assert base.inner.tp == 1
    assert apply_overrides(cfg, ["inner.wandb=none"]).inner.wandb is None


@pytest.mark.parametrize("item,msg", [
    ("inner.tpp=2", "unknown field 'tpp'.*valid: \\['betas', 'lr', 'mode', 'tp', 'wandb'\\]"),
    ("inner.tp=two", "inner.tp='two': expected an integer"),
    ("bf16=maybe", "expected a boolean"),
    ("inner.mode=sum", "expected one of \\['seq_mean', 'token_mean'\\]"),
    ("inner=3", "inner is a section"),
    ("inner.tp", "expected dotted.field=value"),
    ("inner.tp=0", "inner.tp=0: expected >= 1"),  # the section's own validation runs again
])
def test_bad_overrides_name_the_field(item, msg):
    with pytest.raises(ValueError, match=msg):
        apply_overrides(_Outer(), [item])


@dataclass(kw_only=True)
class _Engine:
    tp_infer: int = 1
    executor: str = "uni"

    def __post_init__(self):
        if self.tp_infer > 1 and self.executor != "external_launcher":
            raise ValueError(f"engine.executor must be 'external_launcher' when tp_infer > 1, got {self.executor!r}")


@dataclass(kw_only=True)
class _Run:
    engine: _Engine = field(default_factory=_Engine)
    inner: _Inner = field(default_factory=_Inner)


def test_override_order_never_matters():
    """Every override is applied before any section validates: either order gives the same config."""
    a = apply_overrides(_Run(), ["engine.tp_infer=2", "engine.executor=external_launcher"])
    b = apply_overrides(_Run(), ["engine.executor=external_launcher", "engine.tp_infer=2"])
    assert a == b and (a.engine.tp_infer, a.engine.executor) == (2, "external_launcher")
    with pytest.raises(ValueError, match="must be 'external_launcher' when tp_infer > 1"):
        apply_overrides(_Run(), ["engine.tp_infer=2"])  # the final value is still validated
    assert apply_overrides(_Run(), ["inner.tp=0", "inner.tp=3"]).inner.tp == 3  # last wins, validated once


def test_override_order_on_the_real_rollout_config():
    from configs import get_recipe

    base = get_recipe("tiny_cpu")
    a = apply_overrides(base, ["rollout.tp_infer=2", "rollout.executor=external_launcher", "policy.tp=2"])
    b = apply_overrides(base, ["policy.tp=2", "rollout.executor=external_launcher", "rollout.tp_infer=2"])
    assert a == b and a.rollout.tp_infer == 2 and base.rollout.tp_infer == 1


def test_config_from_dict_round_trips_a_recipe():
    import dataclasses

    from configs import get_recipe
    from red_megatron.config import RunConfig
    from red_megatron.overrides import config_from_dict

    cfg = apply_overrides(get_recipe("tiny_cpu"), ["policy.tp=2", "algo.preset=grpo"])
    back = config_from_dict(RunConfig, json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['policy.tpp'\]"):
        config_from_dict(RunConfig, {**dataclasses.asdict(cfg), "policy": {"tpp": 2}})
