"""A pool of long-lived worker processes joined in one gloo process group.

Each worker runs ``fn(*args)`` for every task the parent sends and sends back the result
(or the formatted exception). Functions must be importable top-level callables (they are
pickled by reference). A function that initialises megatron's parallel state must destroy
it before returning so the next test starts clean; ``tests.dist_pool.megatron_parallel``
is a context manager that does both.
"""
from __future__ import annotations

import contextlib
import os
import socket
import traceback

import torch.multiprocessing as mp

_TIMEOUT_S = float(os.environ.get("RED_DIST_TEST_TIMEOUT", "600"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, tasks, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    while True:
        item = tasks.get()
        if item is None:
            break
        fn, args, kwargs = item
        try:
            results.put((rank, True, fn(*args, **kwargs)))
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class DistPool:
    def __init__(self, world_size: int = 2):
        ctx = mp.get_context("spawn")
        self.world_size = world_size
        self._tasks = [ctx.Queue() for _ in range(world_size)]
        self._results = ctx.Queue()
        port = _free_port()
        self._procs = [ctx.Process(target=_worker, args=(r, world_size, port, self._tasks[r], self._results),
                                   daemon=True) for r in range(world_size)]
        for p in self._procs:
            p.start()

    def run(self, fn, *args, **kwargs) -> list:
        for q in self._tasks:
            q.put((fn, args, kwargs))
        out: list = [None] * self.world_size
        errors = []
        for _ in range(self.world_size):
            rank, ok, value = self._results.get(timeout=_TIMEOUT_S)
            if ok:
                out[rank] = value
            else:
                errors.append(f"--- rank {rank} ---\n{value}")
        if errors:
            raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed on the worker pool:\n" + "\n".join(errors))
        return out

    def close(self) -> None:
        for q in self._tasks:
            q.put(None)
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()


@contextlib.contextmanager
def megatron_parallel(tp: int = 1, pp: int = 1, seed: int = 1234, cp: int = 1, ep: int = 1):
    """Initialise megatron's model-parallel state on the pool's gloo group, then tear it down."""
    from red_megatron.policy.parallel import destroy_model_parallel, init_model_parallel

    groups = init_model_parallel(tp=tp, pp=pp, seed=seed, cp=cp, ep=ep)
    try:
        yield groups
    finally:
        destroy_model_parallel()
