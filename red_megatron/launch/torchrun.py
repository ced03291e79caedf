"""torchrun with the project's stop protocol: a stop signal ends in the ranks' one line and exit code 3.

Plain torchrun turns a clean stop into a traceback: its agent handles SIGINT/SIGTERM by raising
``SignalException`` (it forwards the signal, waits for the ranks, then re-raises it: exit 1 and a
traceback), and a rank's own exit code 3 (stopped, checkpoint saved) or 2 (a refusal, already printed
as one line) comes back as ``ChildFailedError`` with torchrun's error report. Here the agent is left
only SIGHUP/SIGQUIT; SIGINT, SIGTERM and SIGUSR1 (Slurm's pre-timeout signal) are forwarded to the
ranks (each in its own session: a terminal's Ctrl-C reaches only this process), which finish their
step, save and exit 3; the agent then reports them as failed with that code, and this process exits
with it, silently. Any other failure keeps torchrun's report.

  python -m red_megatron.launch.torchrun --standalone --nproc-per-node 2 scripts/train.py --recipe tiny_cpu
  red-train --nproc-per-node 2 --recipe tiny_cpu           # the same, after red-train's own checks

``red-launch --executor local`` starts every task through this module (NeMo-Run reports a job's state, not
its exit code): with ``RED_EXIT_STATUS=FILE`` the exit code and the stop signal are written to FILE as JSON,
and with ``RED_LAUNCH_STOP=FILE`` a task started after the launcher was told to stop (FILE exists: a
sequential sweep's next task) exits 3 at once, untouched.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys

from red_megatron.run_control import EXIT_INTERRUPTED, STOP_SIGNALS

EXIT_REFUSED = 2  # a rank refused its input (one line on stderr): run_cli's exit code
_QUIET_CODES = (EXIT_INTERRUPTED, EXIT_REFUSED)
_AGENT_SIGNALS = "SIGHUP,SIGQUIT"  # what the agent still handles itself (it then stops the ranks)


class _Forward:
    """The stop signals, passed on to the ranks (this process's children); remembers the first."""

    def __init__(self):
        self.received: str | None = None

    def __call__(self, signum, frame) -> None:
        import psutil

        if self.received is None:
            self.received = signal.Signals(signum).name
            # the agent's notes on the stopping ranks ("failed (exitcode: 3)", "Sending process ... closing
            # signal") are noise now; a crash is still reported, by the ChildFailedError run_torchrun re-raises
            for name in list(logging.root.manager.loggerDict):
                if name.startswith("torch.distributed.elastic"):
                    logging.getLogger(name).setLevel(logging.CRITICAL)
        for child in psutil.Process().children():
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


def quiet_exit_code(failures: dict, stopped: bool) -> int | None:
    """The exit code to leave with silently, or None (torchrun's report): every failed rank exited 3 (or 2),
    or some did and the rest were ended by the agent's closing signal (for 3: after a stop signal; for 2: the
    agent closes the other ranks as soon as one has refused, before they get to refuse too)."""
    codes = {f.exitcode for f in failures.values()}
    for code in _QUIET_CODES:
        if codes == {code} or ((stopped or code == EXIT_REFUSED) and code in codes
                               and all(c == code or c < 0 for c in codes)):
            return code
    return None


def run_torchrun(argv: list[str]) -> int:
    """torch.distributed.run's ``main(argv)`` with the stop protocol above; returns the exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(argv)
    if hasattr(args, "signals_to_handle"):
        args.signals_to_handle = _AGENT_SIGNALS
    forward = _Forward()
    old = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    code = 1  # what an exception (a crash, torchrun's report) leaves in the status file
    try:
        try:
            torchrun.run(args)
            code = 0
        except ChildFailedError as e:
            quiet = quiet_exit_code(e.failures, forward.received is not None)
            if quiet is None:
                raise  # a crash: torchrun's own report of it
            code = quiet
        return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        write_exit_status(code, forward.received)


def write_exit_status(code: int, signame: str | None, skipped: bool = False) -> None:
    """For red-launch (``RED_EXIT_STATUS``): this launch's exit code and the stop signal, if any."""
    path = os.environ.get("RED_EXIT_STATUS")
    if path:
        with open(path, "w") as f:
            json.dump({"exit_code": code, "signal": signame, "skipped": skipped}, f)


def main(argv=None) -> int:
    stop = os.environ.get("RED_LAUNCH_STOP")
    if stop and os.path.exists(stop):  # the launcher was stopped before this task started: leave it unstarted
        write_exit_status(EXIT_INTERRUPTED, None, skipped=True)
        return EXIT_INTERRUPTED
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(run_torchrun)(sys.argv[1:] if argv is None else list(argv))  # record: torchrun's crash report


if __name__ == "__main__":
    sys.exit(main())
