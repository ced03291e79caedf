"""A run that only skips steps (non-finite loss or gradient) stops with one line instead of exiting 0.

The non-finite loss is injected (a real one that leaves the weights finite cannot be produced on demand):
the child process wraps the real optimizer step so that it sees ``loss_finite=False``, so megatron's real
skip path runs (weights and optimizer untouched) and the trainer's real stop decides.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys
import red_megatron.policy.policy as P
real = P.optimizer_step
bad = {int(s) for s in sys.argv[1].split(',') if s}
calls = [0]
def step(*a, **k):
    calls[0] += 1
    if calls[0] in bad:
        k['loss_finite'] = False
    return real(*a, **k)
P.optimizer_step = step
from red_megatron.cli.train import main
sys.exit(main(sys.argv[2:]))
"""


def _run(tmp: Path, model: Path, bad: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("RED_DEBUG", "RANK", "WORLD_SIZE")},
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, bad, "--recipe", "tiny_cpu", f"model_dir={model}", "--run-dir",
           str(tmp / "run"), "algo.preset=sft", "use_preset_schedule=false", "export_hf=false",
           "metrics.progress=false", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _steps(tmp: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]


def test_steps_skipped_in_a_row_stop_the_run(tmp_path, tiny_ckpt_dir):
    p = _run(tmp_path, tiny_ckpt_dir, "2,3,4", "steps=8", "max_skipped_in_a_row=3")
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    errors = [x for x in p.stderr.splitlines() if x.startswith("error: ")]  # beside it: the skipped steps' WARNINGs
    assert len(errors) == 1 and errors[0].startswith("error: training diverged: steps 2-4 (3 in a row)"), \
        p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.count("WARNING step") == 3, p.stderr[-3000:]
    assert "the weights are step 1's" in p.stderr and "max_skipped_in_a_row=3" in p.stderr
    rows = _steps(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the skipped steps are logged, then it stops
    assert [r["optim/skipped"] for r in rows] == [0.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad,limit,rc", [("1,2", "5", 2), ("2", "5", 0), ("1,2", "0", 0)],
                         ids=["every-step-skipped", "one-skip-recovers", "limit-off"])
def test_a_run_of_only_skipped_steps_is_refused(tmp_path, tiny_ckpt_dir, bad, limit, rc):
    p = _run(tmp_path, tiny_ckpt_dir, bad, "steps=2", f"max_skipped_in_a_row={limit}")
    assert p.returncode == rc, (p.returncode, p.stderr[-3000:])
    if rc:
        assert "error: training diverged: steps 1-2 (2 in a row)" in p.stderr
        assert "the weights are the starting ones" in p.stderr
    else:
        assert _steps(tmp_path)[-1]["train/skipped_steps"] == len(bad.split(","))
