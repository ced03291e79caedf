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
"""
from __future__ import annotations

import logging
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
    or, after a stop signal, some exited 3 and the rest were ended by the agent's closing signal."""
    codes = {f.exitcode for f in failures.values()}
    for code in _QUIET_CODES:
        if codes == {code} or (stopped and code == EXIT_INTERRUPTED and code in codes
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
    try:
        try:
            torchrun.run(args)
        except ChildFailedError as e:
            code = quiet_exit_code(e.failures, forward.received is not None)
            if code is None:
                raise  # a crash: torchrun's own report of it
            return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(run_torchrun)(sys.argv[1:] if argv is None else list(argv))  # record: torchrun's crash report


if __name__ == "__main__":
    sys.exit(main())
