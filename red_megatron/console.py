"""The console while a command runs: the project's own lines, and nothing of the libraries'.

``setup_run_logging`` (metrics.py) already sends the libraries' Python log lines and warnings to the
run's ``library.log``. What it cannot reach is written straight to file descriptor 2: torch's C++
warnings (vLLM's CPU worker: "NUMA binding ..."), tqdm bars (vLLM's weight loader), and everything
the helper processes started meanwhile print (vLLM's engine core, the verifier's workers, megatron's
checkpoint writer inherit fd 2). ``library_output_to_log(path)`` points fd 2 at the log for its
duration; the project's console handler keeps a duplicate of the real stderr.

So that a refusal is the only line a user sees on stderr (issue 29), the project's INFO lines of the
start-up ("old-policy pass skipped ...", "resumed at step N") are held back from the console until
the run logs its first step (``release_startup_lines``, called by MetricsLogger.log); they are in the
log file at once either way. A refusal or a bug leaves the block first: stderr is the console again
when ``run_cli`` prints its one line or Python its traceback.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


class _HoldInfo(logging.Filter):
    """Keeps the console's records below WARNING until released (then replays them in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.holding = True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.holding and record.levelno < logging.WARNING:
            self.held.append(record)
            return False
        return True


_active: list[tuple[logging.Handler, _HoldInfo]] = []


def _console_handlers() -> list[logging.StreamHandler]:
    """The console handlers setup_run_logging installed (the file handler is a StreamHandler too)."""
    return [h for h in logging.getLogger().handlers if getattr(h, "_red_run_logging", False)
            and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def release_startup_lines() -> None:
    """The run is under way: the held start-up lines go to the console, and later ones at once."""
    while _active:
        handler, hold = _active.pop()
        handler.removeFilter(hold)
        hold.holding = False
        for record in hold.held:
            handler.handle(record)


@contextlib.contextmanager
def library_output_to_log(path: str | Path, *, enabled: bool = True) -> Iterator[None]:
    """fd 2 -> ``path`` (appended) for the block; the project's console lines keep the real stderr."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        console_fd = os.dup(2)
    except OSError:  # no stderr at all (a daemon): nothing to keep apart
        yield
        return
    console = open(console_fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                   closefd=False)
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    handlers = _console_handlers()
    holds = [_HoldInfo() for _ in handlers]
    for h, hold in zip(handlers, holds):
        h.setStream(console)
        h.addFilter(hold)
        _active.append((h, hold))
    ok = False
    try:
        yield
        ok = True
    finally:
        sys.stderr.flush()
        for h, hold in list(_active):
            if h in handlers:
                h.removeFilter(hold)
                _active.remove((h, hold))
        for h in handlers:
            h.setStream(sys.stderr)
        console.close()
        os.dup2(console_fd, 2)
        os.close(console_fd)
        if ok:  # a command without steps (an export) ends: its held lines show now; after a refusal or a bug
            for h, hold in zip(handlers, holds):  # they stay in the log file only
                if hold.holding:
                    hold.holding = False
                    for record in hold.held:
                        h.handle(record)
