"""Managing a run directory (issue 28): one run at a time (a lock), no silent mixing of two runs, a resume
that applies a changed schedule (and says so), and signals that stop a run with a checkpoint it resumes
from bit-exactly, under torchrun.

The long tests train the tiny recipe's SFT preset (no vLLM engine: the loop, checkpoints and signals are
the same for every preset) through the real CLI.
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
from red_megatron.run_control import EXIT_INTERRUPTED, prepare_run_dir, run_dir_lock
from tests.procs import run_in_session

REPO = Path(__file__).resolve().parents[1]
SFT = ("algo.preset=sft", "use_preset_schedule=false", "export_hf=false", "metrics.progress=false")


def _cmd(run_dir, *overrides, nproc: int = 0) -> list[str]:
    args = [str(REPO / "scripts" / "train.py"), "--recipe", "tiny_cpu", "--run-dir", str(run_dir), *SFT, *overrides]
    if nproc:  # red-train starts torchrun itself (red_megatron.launch.torchrun)
        return [sys.executable, args[0], "--nproc-per-node", str(nproc), *args[1:]]
    return [sys.executable, *args]


def _env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), RED_DEBUG="")


def _train(run_dir, *overrides, expect: int = 0) -> str:
    rc, out, err = run_in_session(_cmd(run_dir, *overrides), timeout=600, what="red-train", env=_env(), cwd=REPO)
    assert rc == expect, f"exit {rc}, expected {expect}:\n{out[-2000:]}\n{err[-4000:]}"
    return out + err  # the run's INFO lines (a changed schedule applied) are on stdout, refusals on stderr, last


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> None:
    """Until the run has logged ``step`` steps (it must not end before)."""
    metrics, deadline = run / "metrics.jsonl", time.time() + 600
    while not (metrics.exists() and metrics.read_text().count("\n") >= step):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.time() < deadline, f"the run did not reach step {step}"
        time.sleep(0.05)


def test_a_second_run_in_a_locked_run_dir_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom red_megatron.run_control import "
                               "run_dir_lock\nwith run_dir_lock(sys.argv[1]):\n    print('held', flush=True)\n"
                               "    time.sleep(120)\n", str(tmp_path)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _train(tmp_path, "steps=1", expect=2)
        last = err.strip().splitlines()[-1]
        assert err.count("error:") == 1 and last.startswith(f"error: run_dir {tmp_path} is in use by another run "
                                                            f"(pid {holder.pid} on "), err
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(tmp_path):  # the kernel released the dead holder's lock: no stale lock
        pass


def test_fresh_start_rule(tmp_path):
    prepare_run_dir(tmp_path, resume=False, overwrite=False, rank0=True)  # an empty dir: nothing to mix
    (tmp_path / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "notes.txt").write_text("mine")
    prepare_run_dir(tmp_path, resume=True, overwrite=False, rank0=True)  # resuming: nothing to refuse
    with pytest.raises(ValueError, match=r"resume=false in run_dir .* holds another run \(checkpoints in .*; "
                                         r"metrics in .*\): .* set overwrite=true"):
        prepare_run_dir(tmp_path, resume=False, overwrite=False, rank0=True)
    prepare_run_dir(tmp_path, resume=False, overwrite=True, rank0=False)  # only rank 0 deletes
    assert (tmp_path / "metrics.jsonl").exists()
    prepare_run_dir(tmp_path, resume=False, overwrite=True, rank0=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the user's own file stays


@pytest.mark.slow
def test_resume_applies_a_changed_schedule_and_refuses_another_batch(tmp_path):
    run = tmp_path / "run"
    _train(run, "steps=3")
    err = _train(run, "steps=5", "policy.lr=0.0001")
    assert "resume at step 3 with another schedule than the checkpoint's, applied from update 4: steps 3 -> 5, " \
           "policy.lr 0.005 -> 0.0001" in err, err
    recs = read_metrics(run)
    assert [(r["step"], r["optim/lr"]) for r in recs] == [(1, 5e-3), (2, 5e-3), (3, 5e-3), (4, 1e-4), (5, 1e-4)]
    saved = json.loads((run / "run_config.json").read_text())  # what runs is what is recorded
    assert saved["config"]["policy"]["lr"] == 1e-4 and saved["effective"]["lr"] == 1e-4
    assert saved["effective"]["resumed_at_step"] == 3
    assert saved["effective"]["schedule_changed"]["policy.lr"] == [5e-3, 1e-4]
    before = (run / "run_config.json").read_text()
    err = _train(run, "steps=6", "data.global_batch_size=16", expect=2)
    assert "data.global_batch_size=16 differs from the checkpoint's 8" in err and err.count("error:") == 1, err
    assert (run / "run_config.json").read_text() == before
    err = _train(run, "steps=6", "resume=false", expect=2)  # a fresh start would mix two runs' steps
    assert "resume=false in run_dir" in err and "overwrite=true" in err, err
    _train(run, "steps=1", "resume=false", "overwrite=true")
    assert [r["step"] for r in read_metrics(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000001"]


@pytest.mark.slow
def test_a_signal_under_torchrun_saves_and_the_run_resumes_bit_exactly(tmp_path):
    common = ("steps=6",)
    ref, run = tmp_path / "uninterrupted", tmp_path / "interrupted"
    rc, out, err = run_in_session(_cmd(ref, *common, nproc=2), timeout=600, what="reference run", env=_env(), cwd=REPO)
    assert rc == 0, err[-4000:]

    proc = subprocess.Popen(_cmd(run, *common, nproc=2), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        metrics, deadline = run / "metrics.jsonl", time.time() + 600
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):  # 2 steps done
            assert proc.poll() is None, proc.communicate()[1][-4000:]
            assert time.time() < deadline, "the run did not reach step 2"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # to torchrun's agent, as Slurm or a scheduler stops a job
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = [r["step"] for r in read_metrics(run)]
    assert 2 <= done[-1] < 6, done
    # one line and exit 3: plain torchrun added its SignalException traceback here and exited 1
    assert proc.returncode == EXIT_INTERRUPTED and "Traceback" not in err, (proc.returncode, err[-4000:])
    assert err.strip().splitlines()[-1] == (f"red-train: stopped by SIGTERM after step {done[-1]}/6; checkpoint saved "
                                            f"in {run / 'checkpoints'} (run the same command again to resume)"), err
    assert sum(ln.startswith("red-train: ") for ln in err.splitlines()) == 1, err[-4000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{done[-1]:08d}"

    rc, out, err = run_in_session(_cmd(run, *common, nproc=2), timeout=600, what="resumed run", env=_env(), cwd=REPO)
    assert rc == 0, err[-4000:]
    want, got = read_metrics(ref), read_metrics(run)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for key in ("optim/loss", "optim/grad_norm", "optim/lr", "entropy/h_sft", "reward/mean"):
        assert [r[key] for r in got] == [r[key] for r in want], f"{key} differs after the interrupted resume"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1], ids=["ctrl-c", "usr1"])
def test_ctrl_c_to_red_launch_local_stops_the_run_with_one_line_and_exit_3(tmp_path, sig):
    """red-launch --executor local: NeMo-Run's local scheduler starts the task in a session of its own, so Ctrl-C
    reached only the launcher (it printed "error: interrupted", exit 130, and the run went on without it; a
    SIGTERM killed it silently, a SIGUSR1 too). Now the launcher passes the signal on, the rank saves and exits
    3, and the launcher reads that code (NeMo-Run says FAILED) and ends with one line and exit 3."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "scripts" / "launch.py"), "--recipe", "tiny_cpu", "--executor", "local",
           "--nproc", "1", "--run-dir", str(run), *SFT, "steps=60"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_step(proc, run, 1)
        proc.send_signal(sig)  # a terminal's Ctrl-C: the launcher only (the task has its own session)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = [r["step"] for r in read_metrics(run)]
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err[-4000:])
    # 60 steps, not 8: under a load of 16 the 8-step run once ended with exit 0 (most likely done before the
    # signal reached it); a lost signal still fails here (the run completes, exit 0)
    assert "Traceback" not in err + out and 1 <= done[-1] < 60, (done, err[-4000:])
    want = f"red-launch: stopped by {sig.name} (train: checkpoint in {run / 'checkpoints'}); run the same command " \
           f"again to resume"
    assert err.strip().splitlines()[-1] == want, err[-4000:]
    assert sum(ln.startswith("red-launch: ") for ln in err.splitlines()) == 1, err[-4000:]
    assert f"red-train: stopped by {sig.name} after step {done[-1]}/60" in out  # the rank's line, tailed by NeMo-Run
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{done[-1]:08d}"


@pytest.mark.slow
@pytest.mark.vllm
def test_ctrl_c_on_a_rollout_run_saves_and_exits_with_one_line(tmp_path):
    """Ctrl-C reaches the whole process group (the vLLM engine, the verifier workers, megatron's checkpoint
    writer): the run still finishes its step, saves and exits 3 with one line, and no traceback.
    checkpoint_every_minutes=0.0001 saves after every step (keep_last_checkpoints=2 keeps the last two)."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--recipe", "tiny_cpu", "--run-dir", str(run),
           "steps=6", "export_hf=false", "metrics.progress=false", "checkpoint_every_minutes=0.0001"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_for_step(proc, run, 2)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    step = read_metrics(run)[-1]["step"]
    assert proc.returncode == EXIT_INTERRUPTED, err[-4000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"red-train: stopped by SIGINT after step {step}/6; checkpoint saved in {run / 'checkpoints'} (run the same "
        f"command again to resume)"), err[-4000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["latest", f"step_{step - 1:08d}", f"step_{step:08d}"]  # one save a step: the timed checkpoints


def test_the_torchrun_wrapper_is_quiet_only_for_a_stop_or_a_refusal():
    from collections import namedtuple

    from red_megatron.launch.torchrun import quiet_exit_code

    F = namedtuple("F", "exitcode")
    assert quiet_exit_code({0: F(3), 1: F(3)}, stopped=True) == EXIT_INTERRUPTED
    assert quiet_exit_code({0: F(3), 1: F(-15)}, stopped=True) == EXIT_INTERRUPTED  # rank 1 closed by the agent
    assert quiet_exit_code({0: F(3), 1: F(-15)}, stopped=False) is None
    assert quiet_exit_code({0: F(2)}, stopped=False) == 2  # a rank's refusal: its one line is the message
    assert quiet_exit_code({0: F(2), 1: F(-15)}, stopped=False) == 2  # rank 1 closed before it refused too
    assert quiet_exit_code({0: F(2), 1: F(1)}, stopped=False) is None
    assert quiet_exit_code({0: F(1)}, stopped=True) is None  # a crash keeps torchrun's report
    assert quiet_exit_code({0: F(3), 1: F(1)}, stopped=True) is None
