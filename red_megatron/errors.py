"""Refusals of the user's input and the one top-level handler every entry point uses.

A *refusal* is an error the user can fix without reading code: a bad config field or command-line
override, a missing or truncated file, a bad data row, a non-finite tensor. Project code raises
``UserError`` (a ``ValueError``, so existing ``except ValueError`` callers keep working) with a
message shaped ``<what> in <file/row/field/tensor>: <expected>``; the other ``ValueError`` and
``OSError`` subclasses the code raises at its boundaries are refusals too.

``run_cli(fn, argv)`` calls ``fn(argv)`` and turns a refusal into ONE line on stderr,
``error: <message>``, and exit code 2 -- printed by rank 0 only under torchrun (every rank usually
refuses the same input: the other ranks wait for torchrun to stop them after rank 0's line, and print
their own only if rank 0 has not exited within $RED_REFUSAL_GRACE_S seconds). ``--debug`` on the
command line or ``RED_DEBUG=1`` prints the traceback as well (on every rank). Anything else (a bug)
propagates with its traceback, as before. While a run works, what the libraries print goes to its log
file (red_megatron/console.py), so the refusal is the one line on stderr.
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

DEBUG_ENV = "RED_DEBUG"
REFUSAL_GRACE_ENV = "RED_REFUSAL_GRACE_S"
EXIT_REFUSED = 2
EXIT_KILLED_BY_SIGINT = 130  # the shell's code for a process ended by Ctrl-C


class UserError(ValueError):
    """Bad user input; the message names the file / row / field / tensor and what was expected."""


class ModelDirError(UserError):
    """A model directory that is missing files or holds unreadable ones."""


class CheckpointError(UserError):
    """A training checkpoint that is missing a part or holds an unreadable one."""


def refusal_types() -> tuple[type[BaseException], ...]:
    """Exception types printed as one line (not a traceback) by ``run_cli``."""
    types: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                         PermissionError]
    try:  # a truncated safetensors file, where a caller did not wrap it
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(types)


def one_line(exc: BaseException) -> str:
    """``error: <message>`` on one line (newlines folded), OSErrors as ``<what> in <file>``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        msg = f"{exc.strerror.lower()} in {exc.filename}"
    else:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError):  # str(KeyError) is the repr of the key
            msg = f"missing key {msg}"
    msg = " ".join(part.strip() for part in msg.splitlines() if part.strip())
    return f"error: {msg}"


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return argv is not None and "--debug" in argv


def is_rank0() -> bool:
    """Rank 0 of a torchrun world (or a one-process run); read from the environment torchrun sets."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except ImportError:  # pragma: no cover
        pass
    return os.environ.get("RANK", "0") == "0"


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0") or 0)


def _wait_for_rank0() -> None:
    """Under torchrun, a rank other than 0 that refused waits before it exits: the first rank to exit makes
    torchrun stop the others, and rank 0 (which usually refuses the same input a moment later, and is
    the one to print it) could be stopped before its line. torchrun stops this rank once rank 0 has
    exited; a rank 0 that did not refuse (this rank's own input) leaves the line to this rank after
    $RED_REFUSAL_GRACE_S seconds (default 60)."""
    import signal
    import time

    try:
        grace = float(os.environ.get(REFUSAL_GRACE_ENV, "60"))
    except ValueError:
        grace = 60.0
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # a run's stop-after-the-step handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # must not outlive the refusal: torchrun's stop ends us
    time.sleep(max(0.0, grace))


def report(exc: BaseException, *, debug: bool = False, stream=None) -> int:
    """Print ``exc`` as a refusal (rank 0 only; traceback too when ``debug``); returns the exit code 2."""
    stream = stream if stream is not None else sys.stderr
    if debug:
        traceback.print_exception(exc, file=stream)
    if is_rank0():
        print(one_line(exc), file=stream, flush=True)
    elif "TORCHELASTIC_RUN_ID" in os.environ and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        _wait_for_rank0()  # usually ends here, stopped by torchrun after rank 0's line
        print(f"{one_line(exc)} (rank {_rank()}; rank 0 did not report it)", file=stream, flush=True)
    return EXIT_REFUSED


def run_cli(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's ``fn(argv)``; a refusal becomes one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    try:
        rc = fn(args)
    except refusal_types() as e:
        return report(e, debug=debug)
    except KeyboardInterrupt:  # Ctrl-C outside a run's steps (a run stops itself: exit 3, red_megatron.run_control)
        if debug:
            raise
        if is_rank0():
            print("error: interrupted", file=sys.stderr, flush=True)
        return EXIT_KILLED_BY_SIGINT
    return 0 if rc is None else int(rc)
