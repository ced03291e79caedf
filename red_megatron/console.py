"""The console while a command runs: the project's own lines, and nothing of the libraries'.

``setup_run_logging`` (metrics.py) sends the libraries' Python log lines and warnings to the run's
``library.log``, the project's INFO lines to stdout and its warnings to stderr. What it cannot reach
is written straight to file descriptor 2: torch's C++ warnings (vLLM's CPU worker: "NUMA binding ..."),
tqdm bars (vLLM's weight loader), and everything the helper processes started meanwhile print (vLLM's
engine core, the verifier's workers, megatron's checkpoint writer inherit fd 2).
``library_output_to_log(path)`` points fd 2 at the log for its duration; the project's warning handler
keeps a duplicate of the real stderr. A refusal or a bug leaves the block first, so stderr is the
console again when ``run_cli`` prints its one line (issue 29) or Python its traceback.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


def _stderr_handlers() -> list[logging.StreamHandler]:
    """setup_run_logging's handlers that write to stderr (its file handler is a StreamHandler too)."""
    return [h for h in logging.getLogger().handlers if getattr(h, "_red_run_logging", False)
            and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and h.stream is sys.stderr]


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
    handlers = _stderr_handlers()
    for h in handlers:
        h.setStream(console)
    try:
        yield
    finally:
        sys.stderr.flush()
        for h in handlers:
            h.setStream(sys.stderr)
        console.close()
        os.dup2(console_fd, 2)
        os.close(console_fd)
