"""A rollout engine in its own process: ``python -m red_megatron.rollout.remote --address ... --index i``.

The disaggregated placement (docs/ASYNC.md) runs ``rollout.num_engines`` of these, each a
:class:`~red_megatron.rollout.engine.RolloutEngine` (``uni`` executor) on its own device(s),
started, health-checked and stopped by the trainer's rank 0 (:mod:`red_megatron.rollout.pool`).
Two channels to the trainer:

- control: a ``multiprocessing.connection`` client of rank 0's listener (127.0.0.1 by default,
  an authkey handed over in the environment, never on the command line). Requests are
  ``(op, kwargs)``; every reply is ``("ok", result)`` or ``("error", traceback text)``.
- weights: one process group between rank 0 (rank 0 of it) and the engines (ranks 1..n), made
  from a ``TCPStore`` rank 0 hosts: a standalone ``ProcessGroupGloo`` on the CPU (NCCL on GPUs
  is the same protocol; see docs/ASYNC.md). A refit is the project's ``RefitPlan``: the plan's
  buckets, the plan's own cut (``RefitPlan.buckets``) on both sides, each broadcast from rank 0 as
  one flat byte buffer and handed to ``refit()`` exactly as the colocated engine gets them.

The engine exits when its control connection closes or its parent process goes away, so a
trainer killed with ``kill -9`` leaves no engine behind.

External engines (``rollout.engine_launch='external'``, e.g. one Slurm task on each node's spare GPUs)
are not started by the trainer: ``python -m red_megatron.rollout.remote --join RUN_DIR/engines --index i``
reads rank 0's address, the model and the rollout settings from ``contact.json`` there and the per-run
secret from ``secret`` (a file only its owner can read: anything looser is refused), connects, and
exits when that connection closes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback

import torch

log = logging.getLogger("red_megatron.rollout.remote")
AUTHKEY_ENV = "RED_ENGINE_AUTHKEY"


def bucket_nbytes(plan, names: list[str]) -> list[int]:
    return [plan.nbytes(n) for n in names]


def weight_group(host: str, port: int, rank: int, size: int, timeout_s: float, *, is_master: bool = False):
    """The weight channel: a process group of its own (not the trainer's world), every op under ``timeout_s``."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, size, is_master=is_master, timeout=timeout, wait_for_workers=False)
    store = dist.PrefixStore("red_weights", store)
    if torch.cuda.is_available():
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, opts)
    return dist.ProcessGroupGloo(store, rank, size, timeout)


def _wire_device() -> torch.device:
    """Where weight buffers travel: the GPU under NCCL (never exercised in this project's CPU tests), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def broadcast_bytes(pg, buf: torch.Tensor) -> None:
    """Broadcast a flat uint8 buffer from the group's rank 0 (gloo moves bytes of any dtype this way)."""
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    pg.broadcast([buf], opts).wait()


class _Server:
    def __init__(self, args):
        from red_megatron.rollout.config import RolloutConfig
        from red_megatron.rollout.engine import RolloutEngine

        self.args = args
        self.cfg = RolloutConfig(**json.loads(args.rollout_json))
        self.engine = RolloutEngine(args.model_dir, self.cfg)
        self.local_rank = int(os.environ.get("RANK", "0"))  # tp_infer > 1: this process's rank in the engine
        self.pg = self.plan = self.layout = None
        self.version = 0

    # --- ops ------------------------------------------------------------------------------------------
    def ping(self):
        return {"pid": os.getpid(), "index": self.args.index, "version": self.version}

    def join_weights(self, *, host: str, port: int, rank: int, size: int, timeout_s: float, plan):
        # rank: the engine's first rank in the weight group; a tensor-parallel engine's ranks follow it
        self.pg = weight_group(host, port, rank + self.local_rank, size, timeout_s)
        self.plan, self.layout = plan.with_engine(self.engine), plan.buckets
        return {"buckets": len(self.layout)}

    def generate(self, **kw):
        t0 = time.perf_counter()
        out = self.engine.generate(**kw)
        samples = [[s.to_wire() for s in per] for per in out]
        return {"samples": samples, "seconds": time.perf_counter() - t0, "version": self.version}

    def extend(self, **kw):
        t0 = time.perf_counter()
        out = self.engine.extend(**kw)
        return {"samples": [s.to_wire() for s in out],
                "seconds": time.perf_counter() - t0, "version": self.version}

    def score(self, *, sequences):
        return self.engine.score(sequences)

    def refit(self, *, version: int):
        from red_megatron.rollout.refit import refit

        t0 = time.perf_counter()
        stats = refit(self.engine, self.plan, self._receive())
        self.version = int(version)
        return {"seconds": time.perf_counter() - t0, "buckets": stats.buckets, "bytes": stats.bytes,
                "version": self.version}

    def _receive(self):
        for names in self.layout:
            sizes = bucket_nbytes(self.plan, names)
            buf = torch.empty(sum(sizes), dtype=torch.uint8, device=_wire_device())
            broadcast_bytes(self.pg, buf)
            for name, part in zip(names, torch.split(buf, sizes)):
                yield name, part.view(self.plan.dtype).view(self.plan.shapes[name])


def _watch_parent(parent: int) -> None:
    """Exit when the trainer process that started us is gone (no orphan engines). A tensor-parallel engine's
    ranks are children of torchrun's agent, so the trainer's pid is probed, not compared with our parent's."""
    while True:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(3)
        except PermissionError:  # the pid now belongs to another user's process: ours is gone
            os._exit(3)
        time.sleep(1.0)


def _read_join_dir(args) -> bytes:
    """External engines: fill ``args`` from <join>/contact.json; the secret from <join>/secret (owner-only)."""
    from pathlib import Path

    d = Path(args.join)
    job = os.environ.get("SLURM_JOB_ID")
    deadline = time.monotonic() + args.join_timeout
    while True:  # a launcher may start the engines before the trainer has written its contact
        try:
            contact = json.loads((d / "contact.json").read_text())
            if job is None or contact.get("job") == job:  # not a previous job's contact in the same run_dir
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            print(f"error: no contact.json of this job in {d} within --join-timeout={args.join_timeout:g} s (is the "
                  f"trainer running with rollout.engine_launch=external and this run_dir?)", file=sys.stderr)
            sys.exit(2)
        time.sleep(1.0)
    secret = d / "secret"
    mode = secret.stat().st_mode & 0o777
    if mode & 0o077:
        print(f"error: {secret} is readable by others (mode {mode:o}); expected 600: the per-run engine secret "
              f"stays with its owner", file=sys.stderr)
        sys.exit(2)
    args.address, args.model_dir = contact["address"], contact["model_dir"]
    args.rollout_json = json.dumps(contact["rollout"])
    return bytes.fromhex(secret.read_text().strip())


def serve(args) -> int:
    """One engine: its rank 0 talks to the trainer; with tp_infer > 1 (a torchrun group of its own) the other
    ranks receive every request from rank 0 and run it in lock-step (vLLM's external_launcher needs every rank
    to make the same calls), and only rank 0 replies."""
    import socket
    from multiprocessing.connection import Client

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.parent_pid is not None:  # spawned by the trainer: die with it (an external one has its connection)
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    conn = None
    if rank == 0:
        authkey = _read_join_dir(args) if args.join else bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
        host, port = args.address.rsplit(":", 1)
        conn = Client((host, int(port)), authkey=authkey)
        conn.send(("hello", {"index": args.index, "pid": os.getpid(), "host": socket.gethostname()}))
    else:
        os.environ.pop(AUTHKEY_ENV, None)
        if args.join:
            _read_join_dir(args)
    try:
        server = _Server(args)
        ctl = _control_group() if world > 1 else None
    except BaseException:  # noqa: BLE001 - reported to the trainer, then exit
        if conn is not None:
            conn.send(("error", traceback.format_exc()))
        return 2
    if conn is not None:
        conn.send(("ok", server.ping()))
    while True:
        if conn is not None:
            try:
                op, kwargs = conn.recv()
            except (EOFError, OSError):  # the trainer is gone
                op, kwargs = "close", {}
                conn = None
        if ctl is not None:  # the other ranks of a tensor-parallel engine follow rank 0
            box = [op, kwargs] if rank == 0 else [None, None]
            import torch.distributed as dist

            dist.broadcast_object_list(box, src=0, group=ctl)
            op, kwargs = box
        if op == "close":
            if conn is not None:
                conn.send(("ok", None))
            server.engine.close()
            return 0
        fn = getattr(server, op, None) if not op.startswith("__") else None
        try:
            if fn is None:
                raise ValueError(f"remote engine: unknown op {op!r}")
            reply = ("ok", fn(**kwargs))
        except BaseException:  # noqa: BLE001
            reply = ("error", traceback.format_exc())
            if rank != 0:  # a follower out of step with rank 0 cannot go on: torchrun then stops the engine
                log.error("engine rank %d failed in %s:\n%s", rank, op, reply[1])
                return 2
        if conn is None:
            continue
        try:
            conn.send(reply)
        except (EOFError, OSError):
            conn = None


def _control_group():
    """A gloo group over the engine's ranks for the requests rank 0 relays (vLLM set up torch.distributed)."""
    import torch.distributed as dist

    return dist.new_group(backend="gloo")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--join", help="an external engine: the run's engines directory (<run_dir>/engines), which holds "
                                  "the trainer's contact.json and the owner-only secret")
    p.add_argument("--join-timeout", type=float, default=900.0, help="--join: the longest wait for the trainer's "
                                                                         "contact.json (seconds)")
    p.add_argument("--address", help="host:port of the trainer's control listener (spawned engines)")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--model-dir")
    p.add_argument("--rollout-json", help="the RolloutConfig fields, as JSON")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (spawned engines)")
    args = p.parse_args(argv)
    if not args.join and not (args.address and args.model_dir and args.rollout_json):
        p.error("either --join DIR or all of --address, --model-dir and --rollout-json")
    # Slurm's pre-timeout SIGUSR1 (red-launch --signal-before) reaches every process of the job step; the
    # trainer stops after its step and then closes the engines (vLLM's own processes inherit the ignore)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"[engine {args.index}] %(levelname)s %(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
