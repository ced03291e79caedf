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
  buckets, computed once on both sides by :func:`bucket_layout`, each broadcast from rank 0 as
  one flat byte buffer and handed to ``refit()`` exactly as the colocated engine gets them.

The engine exits when its control connection closes or its parent process goes away, so a
trainer killed with ``kill -9`` leaves no engine behind.
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


def bucket_layout(plan) -> list[list[str]]:
    """The refit buckets of ``plan``, in stream order, as ``refit()`` would cut them (flush before a
    tensor that would overflow ``bucket_bytes``; 0 bytes: one tensor a bucket)."""
    elt = torch.empty((), dtype=plan.dtype).element_size()
    buckets, cur, cur_bytes = [], [], 0
    for name in plan.names:
        n = elt
        for s in plan.shapes[name]:
            n *= int(s)
        if cur and cur_bytes + n > plan.bucket_bytes:
            buckets.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += n
    if cur:
        buckets.append(cur)
    return buckets


def bucket_nbytes(plan, names: list[str]) -> list[int]:
    elt = torch.empty((), dtype=plan.dtype).element_size()
    return [elt * int(torch.Size(plan.shapes[n]).numel()) for n in names]


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
        self.pg = self.plan = self.layout = None
        self.version = 0

    # --- ops ------------------------------------------------------------------------------------------
    def ping(self):
        return {"pid": os.getpid(), "index": self.args.index, "version": self.version}

    def join_weights(self, *, host: str, port: int, rank: int, size: int, timeout_s: float, plan):
        self.pg = weight_group(host, port, rank, size, timeout_s)
        self.plan, self.layout = plan.with_engine(self.engine), bucket_layout(plan)
        return {"buckets": len(self.layout)}

    def generate(self, **kw):
        t0 = time.perf_counter()
        out = self.engine.generate(**kw)
        samples = [[(s.token_ids, s.logprobs, s.finish_reason) for s in per] for per in out]
        return {"samples": samples, "seconds": time.perf_counter() - t0, "version": self.version}

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
    """Exit when the trainer process that started us is gone (no orphan engines)."""
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(1.0)


def serve(args) -> int:
    from multiprocessing.connection import Client

    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    host, port = args.address.rsplit(":", 1)
    conn = Client((host, int(port)), authkey=authkey)
    conn.send(("hello", {"index": args.index, "pid": os.getpid()}))
    threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    try:
        server = _Server(args)
    except BaseException:  # noqa: BLE001 - reported to the trainer, then exit
        conn.send(("error", traceback.format_exc()))
        return 2
    conn.send(("ok", server.ping()))
    while True:
        try:
            op, kwargs = conn.recv()
        except (EOFError, OSError):  # the trainer is gone
            return 0
        if op == "close":
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
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="host:port of the trainer's control listener")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--rollout-json", required=True, help="the RolloutConfig fields, as JSON")
    p.add_argument("--parent-pid", type=int, default=os.getppid())
    args = p.parse_args(argv)
    # Slurm's pre-timeout SIGUSR1 (red-launch --signal-before) reaches every process of the job step; the
    # trainer stops after its step and then closes the engines (vLLM's own processes inherit the ignore)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format=f"[engine {args.index}] %(levelname)s %(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
