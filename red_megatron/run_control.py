"""One run a run directory, and a run that stops when asked: the lock, the fresh-start rule, stop signals.

- ``run_dir_lock``: rank 0 holds an exclusive ``flock`` on ``run_dir/.lock`` for the run's life; a second
  run in the same directory is refused at once, naming the holder. The kernel drops the lock when its
  process dies (a SIGKILL leaves no stale lock behind).
- ``prepare_run_dir``: ``resume=false`` in a directory that holds another run's checkpoints or metrics is
  refused (their steps would mix), unless ``overwrite=true``, which deletes that run's outputs first.
- ``StopSignals``: SIGINT, SIGTERM and SIGUSR1 (Slurm's pre-timeout signal, ``red-launch --signal-before``)
  only set a flag; the trainer finishes the current step, saves a checkpoint and raises ``RunInterrupted``,
  which the CLI prints as one line and exit code ``EXIT_INTERRUPTED``. Why finish rather than abandon the
  step: an abandoned step saves nothing a SIGKILL would not (the last checkpoint), while a finished one
  loses no work; a long step under a hard deadline is what the pre-timeout signal is for.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from red_megatron.errors import UserError

log = logging.getLogger("red_megatron.trainer")

EXIT_INTERRUPTED = 3  # stopped by a signal, checkpoint saved: run the same command again to resume
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
LOCK_NAME = ".lock"
# what a run writes into its directory; overwrite=true deletes these (and nothing else a user put there)
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "run_config.json", "hf", "eval", "plots", "timeline.json")


class RunInterrupted(Exception):
    """The run stopped on a signal after saving its checkpoint."""

    def __init__(self, signame: str, step: int, steps: int, checkpoint_dir):
        self.signame, self.step, self.steps, self.checkpoint_dir = signame, step, steps, checkpoint_dir
        super().__init__(f"stopped by {signame} after step {step}/{steps}; checkpoint saved in {checkpoint_dir} "
                         f"(run the same command again to resume)")


@contextlib.contextmanager
def run_dir_lock(run_dir, *, enabled: bool = True):
    """Hold ``run_dir/.lock`` exclusively (rank 0); a run already holding it is one refusal naming it."""
    if not enabled:
        yield
        return
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise UserError(f"run_dir {run_dir} is in use by another run ({holder}): wait for it, stop it, or "
                            f"use another run_dir") from None
        except OSError as e:  # a filesystem without flock (some NFS/Lustre mounts): run, unprotected
            if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            log.warning("run_dir %s: no lock (the filesystem refuses flock: %s); do not start a second run here",
                        run_dir, e.strerror)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def previous_run(run_dir) -> list[str]:
    """What in ``run_dir`` belongs to a run already made there (its checkpoints, its metrics)."""
    d = Path(run_dir)
    found = []
    if (d / "checkpoints").is_dir() and any((d / "checkpoints").iterdir()):
        found.append(f"checkpoints in {d / 'checkpoints'}")
    if (d / "metrics.jsonl").is_file() and (d / "metrics.jsonl").stat().st_size > 0:
        found.append(f"metrics in {d / 'metrics.jsonl'}")
    return found


def prepare_run_dir(run_dir, *, resume: bool, overwrite: bool, rank0: bool) -> None:
    """The fresh-start rule; with ``overwrite`` rank 0 deletes the previous run's outputs."""
    found = previous_run(run_dir)
    if resume or not found:
        return
    if not overwrite:
        raise UserError(f"resume=false in run_dir {run_dir}, which holds another run ({'; '.join(found)}): its "
                        f"steps would mix with this one's; set overwrite=true to delete them first, resume=true "
                        f"to continue that run, or use another run_dir")
    if rank0:
        for name in RUN_OUTPUTS:
            p = Path(run_dir) / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        log.info("overwrite=true: deleted the previous run's outputs in %s", run_dir)


class StopSignals:
    """While entered (main thread only), SIGINT/SIGTERM/SIGUSR1 set ``received`` instead of killing."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            log.warning("%s received: stopping after the current step and its checkpoint (SIGKILL abandons it)",
                        name)
        else:  # torchrun forwards the signal a second time: one request is enough
            log.info("%s received again: still stopping after the current step", name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
