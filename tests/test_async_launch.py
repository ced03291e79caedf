"""Launching a disaggregated run (docs/ASYNC.md §5): the local torchrun and the 2-node Slurm dry runs carry
the overrides to scripts/train.py, and a disaggregated layout the trainer cannot run is refused before launch."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_launch import _main, slurm_2n

DISAGG = ["rollout.placement=disaggregated", "rollout.num_engines=2", "rollout.max_staleness=1"]


def test_local_dry_run(tmp_path):
    rc, out, err = _main(["--recipe", "tiny_cpu", "--executor", "local", "--nproc", "2", "--run-dir",
                          str(tmp_path / "r"), "--dry-run", *DISAGG])
    assert rc == 0, err
    line = next(x for x in out.splitlines() if "train.py" in x)
    assert "torchrun " in line and "--nproc-per-node 2" in line, out
    assert line.rstrip().endswith(" ".join(DISAGG)), line


def test_slurm_dry_run(tmp_path):
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"),
                          "--dry-run", *DISAGG, "rollout.tp_infer=1", "rollout.executor=uni"])
    assert rc == 0, err
    srun = [x for x in out.splitlines() if x.startswith("srun ")]
    assert len(srun) == 1 and srun[0].rstrip().endswith(" ".join([*DISAGG, "rollout.tp_infer=1",
                                                                   "rollout.executor=uni"])), out


def test_slurm_refuses_multi_process_engines(tmp_path):
    rc, _, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"),
                        "--dry-run", *DISAGG])  # the 7B recipe's rollout.tp_infer=2
    assert rc != 0 and "rollout.placement='disaggregated'" in err and "rollout.tp_infer must be 1" in err, err
