"""Small helpers the benchmark scripts share: wall-clock timing that waits for the GPU."""
from __future__ import annotations

import time

import torch


def sync() -> None:
    """Wait for queued GPU work (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_times(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``fn()`` for each of ``repeats`` calls after ``warmup`` calls, GPU-synchronised."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out
