"""eval.every (issue 28, item 4): the run evaluates itself on eval.data_path with its own engine every N steps
and after the last one, logs eval/* with the step's metrics and writes a table a row a step into run_dir/eval,
without changing what it trains."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from red_megatron.metrics import read_metrics
from tests.procs import run_in_session

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _train(run_dir, *overrides):
    cmd = [sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu", "--run-dir", str(run_dir),
           "steps=2", "export_hf=false", "metrics.progress=false", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    rc, out, err = run_in_session(cmd, timeout=600, what="red-train", env=env, cwd=REPO)
    assert rc == 0, err[-4000:]
    return out  # the run's INFO lines (eval at step N) are on stdout, stderr is for problems


def test_eval_every_writes_its_table_and_leaves_training_alone(tmp_path):
    out = _train(tmp_path / "eval", "eval.every=1", "eval.periodic_limit=2", "eval.protocol.limit=4",
                 "eval.protocol.max_tokens=16", "eval.at_start=true")
    assert "eval at step 0: Avg." in out and "eval at step 1: Avg." in out and "eval at step 2: Avg." in out
    recs = read_metrics(tmp_path / "eval")
    assert [r["step"] for r in recs] == [1, 2]  # the baseline joins the table, not the steps' metrics
    assert all(0.0 <= r["eval/acc"] <= 100.0 and r["eval/len"] > 0 for r in recs)
    assert all("eval/synthetic_copy/acc" in r for r in recs)
    table = (tmp_path / "eval" / "eval" / "table.md").read_text()
    assert "| step 0 |" in table and "| step 1 |" in table and "| step 2 |" in table
    # the periodic subset at step 1; the baseline (step 0) and the last step on the whole protocol
    assert "step 0: synthetic_copy" in table and table.count("over 4 problems") == 2 and "over 2 problems" in table
    assert sorted(p.name for p in (tmp_path / "eval" / "eval").glob("step_*")) == \
        ["step_00000000", "step_00000001", "step_00000002"]
    _train(tmp_path / "plain")
    plain = read_metrics(tmp_path / "plain")
    for key in ("optim/loss", "optim/grad_norm", "reward/mean", "entropy/h_rl"):
        assert [r[key] for r in recs] == [r[key] for r in plain], f"{key}: evaluating changed the training"
    assert not any(k.startswith("eval/") for k in plain[-1])


def test_at_start_needs_every():
    from red_megatron.config import EvalRunConfig

    with pytest.raises(ValueError, match="eval.at_start=true .* set eval.every"):
        EvalRunConfig(data_path="x.parquet", at_start=True)
    assert EvalRunConfig(data_path="x.parquet", every=5, at_start=True).at_start
