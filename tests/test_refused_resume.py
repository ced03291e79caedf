"""A run refused at resume (its run dir holds another preset's checkpoint) leaves run_config.json alone
(issue 20: it said `grpo` beside a `red` checkpoint)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _train(run_dir, *overrides):
    return subprocess.run([sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu",
                           "--run-dir", str(run_dir), "steps=1", "export_hf=false", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_refused_resume_keeps_run_config(tmp_path):
    run_dir = tmp_path / "run"
    p = _train(run_dir, "algo.preset=red")
    assert p.returncode == 0, p.stderr[-3000:]
    before = (run_dir / "run_config.json").read_text()
    assert json.loads(before)["config"]["algo"]["preset"] == "red"
    p = _train(run_dir, "algo.preset=grpo")
    assert p.returncode != 0 and "the checkpoint is of preset 'red'" in p.stderr, p.stderr[-3000:]
    assert (run_dir / "run_config.json").read_text() == before
    assert (run_dir / "logs" / "library.log").is_file()  # the library's lines went to the run dir
