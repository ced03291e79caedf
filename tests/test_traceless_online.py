"""Online-only presets read prompt/answer files as they are (issue 28, item 5): grpo trains on a file without
the offline trace column with no extra setting, shows no H_sft=nan, and a preset that needs the traces
names the missing column."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from red_megatron.metrics import read_metrics
from tests.procs import run_in_session

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_grpo_trains_on_a_file_without_traces(tmp_path):
    import pyarrow.parquet as pq

    from configs.tiny_cpu import tiny_assets

    table = pq.read_table(tiny_assets()["train"])
    path = tmp_path / "no_traces.parquet"
    pq.write_table(table.drop(["target"]), path)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

    def train(run, preset):
        cmd = [sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu", "--run-dir", str(run),
               f"data.path={path}", f"algo.preset={preset}", "steps=1", "export_hf=false"]
        return run_in_session(cmd, timeout=600, what=f"red-train {preset}", env=env, cwd=REPO)

    rc, out, err = train(tmp_path / "grpo", "grpo")
    assert rc == 0, err[-4000:]
    (line,) = [ln for ln in out.splitlines() if ln.startswith("[red] step 1/1 ")]
    assert "nan" not in line and "H_sft" not in line and "H_rl=" in line, line
    (rec,) = read_metrics(tmp_path / "grpo")
    assert rec["data/traces_truncated"] == 0 and rec["reward/online_accuracy"] >= 0.0
    assert json.loads((tmp_path / "grpo" / "run_config.json").read_text())["config"]["data"]["require_trace"] is None
    rc, out, err = train(tmp_path / "red", "red")  # RED needs the traces: the column is named
    assert rc == 2 and "target" in err.strip().splitlines()[-1] and "error:" in err, err[-3000:]
