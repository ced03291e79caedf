"""One statement of the loss scalars' ranges (issue 28, item 6): the run config (AlgoConfig), the policy's
LossParams, the kernels' entry check and the off-policy / DPO helpers refuse exactly the same values, through
``contract.check_loss_scalar``. They had three validators that disagreed (eps_hi=0 was refused by the config
and accepted by the contract and the kernel; tis_cap=0.5 by the config, not by truncated_is_weights)."""
from __future__ import annotations

import math

import pytest
import torch

from red_megatron.algo.config import AlgoConfig
from red_megatron.algo.contract import LOSS_SCALAR_RULES, LossParams, check_loss_scalar

PROBES = (-1.0, 0.0, 1e-9, 0.2, 0.5, 1.0, 1.5, 10.0, 10.5, math.inf, math.nan)


def _refuses(fn) -> bool:
    try:
        fn()
    except ValueError:
        return True
    return False


def _kernel(name, v):
    from kernels._common import check_inputs

    kw = {"temperature": 1.0, name: v} if name != "temperature" else {"temperature": v}
    return lambda: check_inputs(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), vocab_start=0, vocab_size=4,
                                **kw)


def _tis(name, v):
    from red_megatron.algo.off_policy import truncated_is_weights

    z = torch.zeros(3)
    kw = {"cap": v} if name == "tis_cap" else {"mask_bound": v}
    return lambda: truncated_is_weights(z, z, torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), 1,
                                        **kw)


def _dpo(v):
    from red_megatron.algo.dpo import Pairs, dpo_token_terms

    empty = torch.zeros(0, dtype=torch.long)
    return lambda: dpo_token_terms(logp_N=torch.zeros(0), ref_logp_N=torch.zeros(0), response_len_B=empty,
                                   pairs=Pairs(chosen_P=empty, rejected_P=empty, num_groups=0, dropped=0), beta=v)


@pytest.mark.parametrize("name", sorted(LOSS_SCALAR_RULES))
def test_every_validator_refuses_the_same_values(name):
    ok, _ = LOSS_SCALAR_RULES[name]
    for v in PROBES:
        want = not (math.isfinite(v) and ok(v))
        got = {"AlgoConfig": _refuses(lambda: AlgoConfig(**{name: v}))}
        if name in {f for f in LossParams.__dataclass_fields__}:
            got["LossParams"] = _refuses(lambda: LossParams(**{name: v}))
        if name in ("temperature", "eps_lo", "eps_hi", "luffy_gamma"):
            got["kernel"] = _refuses(_kernel(name, v))
        if name in ("tis_cap", "tis_mask_bound"):
            got["truncated_is_weights"] = _refuses(_tis(name, v))
        if name == "dpo_beta":
            got["dpo_token_terms"] = _refuses(_dpo(v))
        assert set(got.values()) == {want}, (name, v, got)


def test_a_refusal_names_the_field_as_the_user_writes_it():
    with pytest.raises(ValueError, match=r"^algo\.eps_hi must be in \(0, 10\], got 0\.0$"):
        AlgoConfig(eps_hi=0.0)
    with pytest.raises(ValueError, match=r"^non-finite value in algo\.tis_cap=inf: expected a finite number >= 1$"):
        AlgoConfig(tis_cap=math.inf)
    with pytest.raises(ValueError, match=r"^LossParams\.kl_coef must be >= 0, got -1"):
        LossParams(kl_coef=-1)
    with pytest.raises(ValueError, match="must be a number"):
        check_loss_scalar("dpo_beta", "0.1", where="algo")
    check_loss_scalar("tis_mask_bound", None, where="algo", optional=True)


def test_no_other_module_restates_a_loss_scalar_range():
    """The old validators' shapes (``if not self.eps_lo``, ``cap must be``, ``beta must be``) are gone."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"if not .*\b(eps_lo|eps_hi|luffy_gamma|tis_cap|tis_mask_bound|dpo_beta|beta|cap|"
                         r"mask_bound|kl_coef|entropy_coef)\b\s*[<>]|(cap|beta|eps_lo|eps_hi) must be")
    hits = [f"{p.relative_to(repo)}:{i}" for p in [*repo.glob("red_megatron/**/*.py"), *repo.glob("kernels/*.py")]
            if p.name != "contract.py" for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
