"""No orphans: a watchdog process that kills what a trainer started once the trainer is gone.

A trainer starts helper processes it does not own the code of: megatron's checkpoint writer (a
multiprocessing Manager, its resource tracker, a forked writer during a save), the verifier pool's
fork server and workers, the rollout engines. ``kill -9`` of the trainer runs no cleanup, and those
helpers were seen alive minutes later (about 1 GB a crash). Parent-death signals do not fit: the
writer's Manager is started from a short-lived thread, and ``PR_SET_PDEATHSIG`` fires when that
thread ends.

:func:`start_reaper` tags this process's environment (``RED_REAPER_TAG=<pid>:<start time>``, which
every helper started afterwards inherits, through spawn, forkserver or a plain subprocess) and starts
``python -m red_megatron.reaper <pid>``: every ``interval_s`` it records the trainer's descendants (pid
and start time, from /proc); when the trainer is gone it SIGKILLs each recorded process still running
with the same start time (never a reused pid), every process carrying the tag (a helper started in
the last interval, already handed to init), and the children of those, twice, then exits. Linux only
(/proc); elsewhere it is not started.

The tag is seen only in processes that exec'd after it was set: /proc/<pid>/environ shows the
environment a process was exec'd with, and a plain ``fork`` (the checkpoint writer of a save) keeps the
trainer's. Such a child forked after the last look is found by what it shares with the trainer: the
same command line and the same exec environment, started at or after that look and before the
trainer's death (the same command run again, a resume, starts after it: CI of 2026-12-06 caught a
reaper killing it; torchrun's other ranks differ in their environment). The death is seen at once
through a pidfd; on a kernel without pidfds its time is not known and this rule is off.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

INTERVAL_S = 0.5  # a helper forked in the last interval before a kill is found only through its parent


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time in clock ticks) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and parentheses
        out[int(d.name)] = (int(fields[1]), int(fields[19]))
    return out


def _descendants(table: dict[int, tuple[int, int]], roots: set[int]) -> dict[int, int]:
    """pid -> start time of every process below ``roots`` in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out[c] = table[c][1]
                todo.append(c)
    return out


TAG_ENV = "RED_REAPER_TAG"


def _tagged(tag: bytes, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    out = {}
    for pid, (_, start) in table.items():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if tag in b"\0" + env:
            out[pid] = start
    return out


def _ticks_now() -> float:
    """Clock ticks since boot, the unit of /proc's start times."""
    return float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _forked_clones(parent_exec: tuple[bytes | None, bytes | None], launcher: int, since: float, until: float,
                   table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """Processes with the trainer's command line and exec environment started at or after ``since`` and
    by the clock tick of ``until`` (the death: the same command run again starts after it), and not
    children of the trainer's own parent (``launcher``: what started the trainer may start it again;
    orphans go to init or a subreaper)."""
    if None in parent_exec:
        return {}
    out = {}
    for pid, (ppid, start) in table.items():
        if start + 1 >= since and start <= int(until) and (ppid == 1 or ppid != launcher) and \
                (_read(f"/proc/{pid}/cmdline"), _read(f"/proc/{pid}/environ")) == parent_exec:
            out[pid] = start
    return out


def _exited(pid: int) -> bool:
    """Gone or a zombie (it exited; its parent has not reaped it yet)."""
    stat = _read(f"/proc/{pid}/stat")
    return stat is None or stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


def _death_waiter(parent: int):
    """A function sleeping up to its argument in seconds, returning early once ``parent`` exits."""
    try:
        fd = os.pidfd_open(parent)
    except (AttributeError, OSError):  # an old kernel: poll /proc every interval instead
        return time.sleep
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return lambda seconds: poller.poll(seconds * 1000.0)


def watch(parent: int, interval_s: float = INTERVAL_S) -> None:
    me = os.getpid()
    start = _table().get(parent, (0, None))[1]
    tag = f"\0{TAG_ENV}={parent}:{start}\0".encode()
    parent_exec = (_read(f"/proc/{parent}/cmdline"), _read(f"/proc/{parent}/environ"))
    launcher = _table().get(parent, (0, 0))[0]
    wait = _death_waiter(parent)
    known: dict[int, int] = {}
    looked_at = _ticks_now()
    while True:
        now = _ticks_now()
        table = _table()
        # read after the table: a parent that died while it was read leaves the last look standing (its
        # children were being handed to init); a zombie counts as dead (it keeps its pid until reaped, and
        # a look then would find no children and overwrite the last good one: the orphan of 2026-12-06)
        if parent not in table or table[parent][1] != start or _exited(parent):
            died = _ticks_now() if wait is not time.sleep else -1.0  # no pidfd: the death's time is not known
            break
        known, looked_at = {p: t for p, t in _descendants(table, {parent}).items() if p != me}, now
        wait(interval_s)
    quiet = 0
    for _ in range(20):  # until two passes in a row find nothing (what the victims forked meanwhile), ~4 s at most
        table = _table()
        alive = {p: t for p, t in known.items() if p in table and table[p][1] == t}
        alive.update(_tagged(tag, table))
        alive.update(_forked_clones(parent_exec, launcher, looked_at, died, table))
        alive.update(_descendants(table, set(alive)))
        alive.pop(me, None)
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        known = alive
        quiet = 0 if alive else quiet + 1
        if quiet == 2:
            break
        time.sleep(0.2)


def start_reaper(interval_s: float = INTERVAL_S) -> subprocess.Popen | None:
    """Watch this process from a separate one (see the module doc); None where /proc is absent."""
    global _STARTED
    if not Path("/proc/self/stat").is_file():
        return None
    if _STARTED is not None and _STARTED[0] == os.getpid():  # one reaper a process (train() may run twice)
        return _STARTED[1]
    os.environ[TAG_ENV] = f"{os.getpid()}:{_table()[os.getpid()][1]}"
    proc = subprocess.Popen([sys.executable, "-m", "red_megatron.reaper", str(os.getpid()), str(interval_s)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    _STARTED = (os.getpid(), proc)
    return proc


_STARTED: tuple[int, subprocess.Popen] | None = None


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the trainer's group is the trainer's to handle
    watch(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else INTERVAL_S)
