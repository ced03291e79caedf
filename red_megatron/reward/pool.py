"""A small pool of verifier processes with a hard per-task deadline.

Why not ``multiprocessing.Pool`` or ``concurrent.futures``: neither can kill one task that
hangs (sympy on ``10^{10^{10^{10}}}`` can run for minutes) without tearing the whole pool
down, and a worker that dies (segfault in a C extension, ``os._exit``) breaks a
ProcessPoolExecutor for good. Here each worker owns a duplex pipe; the parent hands it one
task at a time and waits on every pipe and process sentinel with the nearest deadline.
A task past its deadline gets its worker killed and replaced and is reported as
``"timeout"``; a worker that dies mid-task is replaced and its task reported as ``"crash"``.

A ``map`` call can also carry a deadline for the whole batch (the trainer's step budget):
when it passes, every task still running is killed and every task not yet started is
reported as ``"deadline"``, so one call never runs past it, however many answers hang.
Tasks can carry a priority (higher handed out first). The scorer hands the likely-fast
answers out first and the likely-slow ones (towers of powers, factorials, long answers)
last: the fast ones never queue behind a hang, and the hanging ones end up side by side
on all workers, killed together at one timeout, so a batch takes about
``ceil(answers / workers) * typical + one timeout``.

An answer still running ``patience_s`` after hand-off while others wait is set aside: it keeps
its worker (niced, so it yields the CPU) and its full ``timeout_s``, and a fresh worker (about
0.1-0.4 s from the fork server, measured on 2 CPU cores) takes its place in the rotation, so an answer that hangs but looks
ordinary no longer holds up the ones queued behind it. A set-aside worker leaves the pool when its
answer ends (at most ``max_set_aside`` at a time; past that, the queue waits as before).

Each worker runs the verifier in its own main thread, which is where math-verify's
``signal.alarm`` timeouts work (they raise in threads). The clock for a task starts when it
is handed to a worker that has finished importing, so a respawn's import time never counts
against an answer.
"""
from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable

TIMEOUT = "timeout"
CRASH = "crash"
DEADLINE = "deadline"  # not finished when the batch's deadline passed


def resolve_callable(path: str) -> Callable[..., Any]:
    """``"pkg.module:function"`` -> the function (importable by name, so spawn can find it)."""
    if ":" not in path:
        raise ValueError(f"verify_fn must look like 'package.module:function', got {path!r}")
    mod_name, fn_name = path.split(":", 1)
    fn = getattr(importlib.import_module(mod_name), fn_name, None)
    if not callable(fn):
        raise ValueError(f"verify_fn {path!r}: {fn_name!r} is not a callable in {mod_name!r}")
    return fn


def _worker_main(conn, fn_path: str, init_path: str | None = None, init_args: tuple = ()) -> None:
    """Worker loop: import the verifier (and run its initializer) once, say ready, then answer
    tasks until told to stop."""
    import signal

    # The trainer decides when to stop, then closes the pool: a worker leaves the trainer's process group, which
    # Ctrl-C and torchrun's stop (a SIGTERM to the group) reach, and ignores Slurm's pre-timeout SIGUSR1 (sent to
    # every process of the job step). SIGTERM to the worker itself keeps its default: multiprocessing ends daemon
    # workers with it at exit. A worker whose trainer died reads EOF and leaves.
    os.setsid()
    for sig in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    fn = resolve_callable(fn_path)
    if init_path is not None:
        resolve_callable(init_path)(*init_args)
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # the parent closed the pipe, or died
            return
        if msg is None:
            return
        task_id, args = msg
        try:
            out = ("ok", fn(*args))
        except Exception as e:  # a verifier bug must not take the worker down
            out = ("error", f"{type(e).__name__}: {e}"[:500])
        conn.send((task_id, out))


@dataclass(eq=False)  # workers are compared by identity (list.remove, list.index)
class _Worker:
    proc: Any
    conn: Any
    ready: bool = False
    task: int | None = None
    handed_at: float = 0.0
    deadline: float = 0.0
    set_aside: bool = False  # its task ran past patience_s: it leaves the pool when that task ends
    spawned_at: float = field(default_factory=time.monotonic)


class VerifyPool:
    """``map(tasks)`` runs ``fn(*task)`` for every task on ``num_workers`` processes.

    Returns one ``(status, value)`` per task, in order: ``("ok", fn_result)``,
    ``("error", message)`` (fn raised), ``("timeout", None)`` or ``("crash", None)``.
    ``patience_s``: a task running longer while others wait is set aside (None: never);
    ``max_set_aside``: how many may be set aside at once (None: 4 x num_workers).
    Not thread-safe: one caller at a time.
    """

    def __init__(self, *, fn_path: str, num_workers: int, timeout_s: float,
                 start_method: str = "forkserver", startup_timeout_s: float = 120.0,
                 init_path: str | None = None, init_args: tuple = (),
                 patience_s: float | None = None, max_set_aside: int | None = None,
                 preload: tuple[str, ...] = ()):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if patience_s is not None and not 0 < patience_s:
            raise ValueError(f"patience_s must be > 0 seconds or None, got {patience_s!r}")
        if max_set_aside is not None and max_set_aside < 0:
            raise ValueError(f"max_set_aside must be >= 0 or None, got {max_set_aside!r}")
        resolve_callable(fn_path)  # fail here, in the caller, on a bad path
        if init_path is not None:
            resolve_callable(init_path)
        self.fn_path = fn_path
        self.init_path, self.init_args = init_path, tuple(init_args)
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        # patience at or past the timeout would set aside nothing the timeout does not already end
        self.patience_s = None if patience_s is None or patience_s >= timeout_s else float(patience_s)
        self.max_set_aside = 4 * num_workers if max_set_aside is None else int(max_set_aside)
        self._ctx = mp.get_context(start_method)
        if preload and start_method == "forkserver":
            # imported once in the fork server, so a worker (a fork of it) does not import them itself;
            # no effect if this process's fork server already runs
            self._ctx.set_forkserver_preload(["__main__", *preload])
        self._workers: list[_Worker] = [self._spawn() for _ in range(num_workers)]
        self.respawns = 0
        self.set_aside_total = 0  # tasks set aside over the pool's life
        self.last_set_aside = 0  # ... in the last map call
        self._closed = False

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, self.fn_path, self.init_path, self.init_args),
                                 daemon=True, name="red-verify")
        proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        return _Worker(proc=proc, conn=parent)

    @staticmethod
    def _kill(w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=10)
        w.conn.close()

    def _replace(self, w: _Worker) -> None:
        """Kill ``w``; a worker in the rotation gets a fresh one in its place, a set-aside one none."""
        self._kill(w)
        if w.set_aside:
            self._workers.remove(w)
            return
        self._workers[self._workers.index(w)] = self._spawn()
        self.respawns += 1

    def _end_task(self, w: _Worker) -> None:
        """``w`` answered: it takes the next task, or leaves the pool if it had been set aside."""
        w.task = None
        if w.set_aside:  # its place in the rotation is already taken
            self._kill(w)
            self._workers.remove(w)

    def _set_aside(self, w: _Worker) -> None:
        """``w``'s task ran past patience_s: let it run on (niced) and put a fresh worker in its place."""
        w.set_aside = True
        try:
            os.setpriority(os.PRIO_PROCESS, w.proc.pid, 19)
        except (OSError, AttributeError):  # not permitted, or not a POSIX system: it just competes
            pass
        self._workers.append(self._spawn())
        self.set_aside_total += 1
        self.last_set_aside += 1

    @property
    def num_workers(self) -> int:
        """Workers in the rotation (set-aside ones, which leave when their task ends, not counted)."""
        return sum(not w.set_aside for w in self._workers)

    def map(self, tasks: list[tuple], *, deadline_s: float | None = None,
            priority: list[float] | None = None) -> list[tuple[str, Any]]:
        """Run every task; ``deadline_s``: seconds from now for the whole batch (None: none);
        ``priority``: one number per task, higher handed out first (ties keep their order)."""
        if self._closed:
            raise RuntimeError("VerifyPool.map called after close()")
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 seconds or None, got {deadline_s!r}")
        if priority is not None and len(priority) != len(tasks):
            raise ValueError(f"priority has {len(priority)} entries for {len(tasks)} tasks")
        for w in list(self._workers):
            if w.task is not None:  # a previous map was interrupted (KeyboardInterrupt): its answer is stale
                self._replace(w)
        if deadline_s is not None:
            self._wait_ready()  # the batch's clock starts when the workers can take work
        t0 = time.monotonic()
        self.last_set_aside = 0
        batch_end = float("inf") if deadline_s is None else t0 + deadline_s
        results: list[tuple[str, Any] | None] = [None] * len(tasks)
        order = range(len(tasks)) if priority is None else sorted(range(len(tasks)), key=lambda t: -priority[t])
        pending = deque(order)
        while pending or any(w.task is not None for w in self._workers):
            now = time.monotonic()
            if now >= batch_end:
                self._cut(results, pending)
                break
            for w in self._workers:  # hand out work to every ready, idle worker
                if w.ready and w.task is None and pending:
                    t = pending.popleft()
                    w.conn.send((t, tasks[t]))
                    w.task, w.handed_at, w.deadline = t, now, now + self.timeout_s
            deadlines = [w.deadline if w.ready else w.spawned_at + self.startup_timeout_s
                         for w in self._workers if w.task is not None or not w.ready]
            if pending and self._can_set_aside():
                deadlines += [w.handed_at + self.patience_s for w in self._workers
                              if w.task is not None and not w.set_aside]
            deadlines.append(batch_end)
            wait_s = max(0.0, min(deadlines) - now) if min(deadlines) < float("inf") else None
            objs = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            wait(objs, timeout=wait_s)
            for w in list(self._workers):
                self._poll_worker(w, results)
            if pending:
                self._set_aside_overdue()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _can_set_aside(self) -> bool:
        return self.patience_s is not None and sum(w.set_aside for w in self._workers) < self.max_set_aside

    def _set_aside_overdue(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if not self._can_set_aside():
                return
            if w.task is not None and not w.set_aside and now >= w.handed_at + self.patience_s:
                self._set_aside(w)

    def _wait_ready(self) -> None:
        """Block until every worker has imported the verifier (raises past startup_timeout_s)."""
        while not all(w.ready for w in self._workers):
            now = time.monotonic()
            first = min(w.spawned_at + self.startup_timeout_s for w in self._workers if not w.ready)
            wait([w.conn for w in self._workers if not w.ready] + [w.proc.sentinel for w in self._workers],
                 timeout=max(0.0, first - now))
            for w in list(self._workers):
                self._poll_worker(w, [])

    def _cut(self, results: list, pending: deque) -> None:
        """The batch's deadline passed: kill what still runs, skip what has not started."""
        for w in list(self._workers):
            if w.task is not None:
                self._poll_worker(w, results)  # it may have just answered (or died: then it is replaced)
            if w in self._workers and w.task is not None:
                results[w.task] = (DEADLINE, None)
                self._replace(w)
        while pending:
            results[pending.popleft()] = (DEADLINE, None)

    def _poll_worker(self, w: _Worker, results: list) -> None:
        now = time.monotonic()
        msg = None
        died = False
        try:
            if w.conn.poll():
                msg = w.conn.recv()
        except (EOFError, OSError):
            died = True
        if msg is not None:
            if msg[0] == "ready":
                w.ready = True
            else:
                task_id, out = msg
                assert task_id == w.task, (task_id, w.task)
                results[task_id] = out
                self._end_task(w)
            return
        if died or not w.proc.is_alive():
            if w.task is not None:
                results[w.task] = (CRASH, None)
            elif not w.ready:
                raise RuntimeError(
                    f"a verifier worker died while starting (exit code {w.proc.exitcode}); "
                    f"check that {self.fn_path!r} imports in a fresh process")
            self._replace(w)
            return
        if w.task is not None and now >= w.deadline:
            results[w.task] = (TIMEOUT, None)
            self._replace(w)
        elif not w.ready and now >= w.spawned_at + self.startup_timeout_s:
            raise RuntimeError(f"a verifier worker did not start within {self.startup_timeout_s} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=2)
            w.conn.close()

    def __enter__(self) -> "VerifyPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; daemon workers also die with the parent
        try:
            self.close()
        except Exception:
            pass
