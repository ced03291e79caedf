"""No orphans (issue 29): helper processes die with the trainer, also on kill -9. A stand-in trainer
starts the kinds of helpers a run starts (the verifier pool's fork server and worker, a spawn
Manager with its resource tracker as megatron's checkpoint writer does, a forked child as its save
does) and is killed; the real trainer is killed mid-run in the slow test."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from red_megatron.reaper import _descendants, _table

REPO = Path(__file__).resolve().parents[1]

STAND_IN = r"""
import multiprocessing as mp, os, sys, time
from red_megatron.reaper import start_reaper
from red_megatron.reward import RewardConfig, RewardScorer

if __name__ == "__main__":
    start_reaper(float(sys.argv[1]))
    scorer = RewardScorer(RewardConfig(num_workers=1))
    scorer.score(["\\boxed{1}"], ["2"])  # fork server + one worker
    manager = mp.get_context("spawn").Manager()  # megatron's writer-results queue: a manager + resource tracker
    queue = manager.Queue()
    if os.fork() == 0:  # the forked writer of a save
        time.sleep(600)
        os._exit(0)
    time.sleep(1.0)  # one reaper look at the whole tree
    print("ready", flush=True)
    sys.stdin.readline()
    # a helper started just before the kill, after the reaper's last look: found by its environment tag
    mp.get_context("spawn").Process(target=time.sleep, args=(600,)).start()
    if os.fork() == 0:  # and a plain fork (a save's writer): no tag in its exec environment
        time.sleep(600)
        os._exit(0)
    print("late", flush=True)
    time.sleep(600)
"""


def _alive(procs: dict[int, int]) -> list[int]:
    table = _table()
    return [p for p, t in procs.items() if p in table and table[p][1] == t and not _zombie(p)]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_and_check(proc: subprocess.Popen, min_helpers: int, relaunch=None) -> None:
    helpers = {p: t for p, t in _descendants(_table(), {proc.pid}).items()}
    assert len(helpers) >= min_helpers, helpers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if relaunch is not None:  # the same command at once (a resume): not one of the dead run's helpers
        relaunch()
    deadline = time.monotonic() + 10.0
    while _alive(helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(helpers), [Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in _alive(helpers)]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the reaper reads /proc (Linux)")
@pytest.mark.parametrize("interval_s", [0.2, 600.0], ids=["looked_often", "never_looked_again"])
def test_helpers_die_with_a_killed_parent(tmp_path, interval_s):
    """At 600 s the reaper's only look is its first one: every helper, the late fork included, must be
    found through the tag, its parent or its likeness to the trainer (the CI race of 2026-12-06)."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(interval_s)], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        # reaper, fork server, worker, manager, resource tracker, forked child
        assert len(_descendants(_table(), {proc.pid})) >= 6
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "late"
        again = []
        _kill_and_check(proc, min_helpers=8, relaunch=lambda: again.append(subprocess.Popen(
            [sys.executable, str(script), str(interval_s)], cwd=REPO, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)))
        # the reaper sweeps for a few seconds after the death: the relaunch (same command line, same exec
        # environment, the same parent) must outlive that
        assert again[0].stdout.readline().strip() == "ready" and again[0].poll() is None
        time.sleep(3.0)
        assert again[0].poll() is None, f"the relaunched run died ({again[0].returncode})"
    finally:
        proc.kill()
        for p in again if "again" in dir() else []:
            p.kill()
            p.wait()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="the reaper reads /proc (Linux)")
@pytest.mark.parametrize("when", ["mid_step", "mid_save"])
def test_a_killed_trainer_leaves_no_process(tmp_path, tiny_ckpt_dir, when):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu",
                             f"model_dir={tiny_ckpt_dir}", "--run-dir", str(run), "steps=40", "checkpoint_every=1",
                             "export_hf=false", "metrics.progress=false"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics, deadline = run / "metrics.jsonl", time.monotonic() + 400
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        if when == "mid_save":  # a save is under way once its tmp directory appears
            while not list((run / "checkpoints").glob(".tmp.*")) and time.monotonic() < deadline:
                time.sleep(0.02)
        _kill_and_check(proc, min_helpers=3)
        # and nothing of this run started after that snapshot either (a fork of a fork): its run dir is unique
        def left() -> list[int]:
            return [pid for pid in _table() if not _zombie(pid) and str(run).encode() in _cmdline(pid)]

        deadline = time.monotonic() + 10.0
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left(), [_cmdline(p)[:160] for p in left()]
    finally:
        proc.kill()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
