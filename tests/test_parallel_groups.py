"""Distribution enters through one frozen ParallelGroups: no project module but policy/parallel.py
reads megatron's parallel_state (megatron's own modules still do; that is their business)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs one RED step of the tiny recipe with every parallel_state getter wrapped: a call whose caller is
# a red_megatron module other than red_megatron.policy.parallel raises.
_DRIVER = r'''
import inspect, sys
from megatron.core import parallel_state as ps

def guard(name, fn):
    def wrapped(*a, **k):
        caller = inspect.currentframe().f_back.f_globals.get("__name__", "")
        if caller.startswith("red_megatron") and caller != "red_megatron.policy.parallel":
            raise RuntimeError(f"{caller} read megatron's parallel_state.{name}")
        return fn(*a, **k)
    return wrapped

n = 0
for name in dir(ps):
    if name.startswith(("get_", "is_", "model_parallel_is")) and callable(getattr(ps, name)):
        setattr(ps, name, guard(name, getattr(ps, name)))
        n += 1
assert n > 30, n
try:  # the guard bites on a project module's call
    exec("ps.get_tensor_model_parallel_world_size()", {"__name__": "red_megatron.somewhere", "ps": ps})
except RuntimeError:
    pass
else:
    raise SystemExit("the guard did not raise")
from red_megatron.cli.train import main
sys.exit(main(sys.argv[1:]))
'''


def test_no_project_module_reads_parallel_state():
    hits = [str(p.relative_to(ROOT)) for p in (ROOT / "red_megatron").rglob("*.py")
            if "parallel_state" in p.read_text() and p.name != "parallel.py"]
    assert hits == [], f"modules reading megatron's parallel_state outside policy/parallel.py: {hits}"


def test_groups_are_frozen():
    from red_megatron.policy.parallel import ParallelGroups

    assert dataclasses.is_dataclass(ParallelGroups) and ParallelGroups.__dataclass_params__.frozen
    names = {f.name for f in dataclasses.fields(ParallelGroups)}
    assert {"tp_group", "pp_group", "dp_group", "cp_group", "mp_group", "mp_src", "dp_cp_group"} <= names


@pytest.mark.vllm
@pytest.mark.slow
def test_a_red_step_runs_with_parallel_state_getters_guarded(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", _DRIVER, "--recipe", "tiny_cpu", "--run-dir", str(tmp_path / "run"), "steps=1",
           "export_hf=false", "metrics.progress=false"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
