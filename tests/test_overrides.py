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
