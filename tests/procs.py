"""Multi-process runs from tests: a command in its own session, killed as a group on a timeout.

Why a session: a torchrun rank whose peer died waits forever; killing the process group takes every
rank down with torchrun instead of leaving one behind (and CI hanging).
"""
from __future__ import annotations

import os
import signal
import subprocess

import pytest


def run_in_session(cmd: list[str], *, timeout: float, what: str, env: dict | None = None, cwd=None,
                   merge_output: bool = False) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of ``cmd``; on a timeout the group is killed and the test fails,
    naming ``what`` and quoting the output's tail."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what}: killed after {timeout:.0f} s (a hang?)\n{(out or '')[-3000:]}\n{(err or '')[-4000:]}")
    return proc.returncode, out or "", err or ""
