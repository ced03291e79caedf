"""What the benchmark scripts share: the import set-up, run metadata, GPU-synchronised timing.

Importing it puts the repository root on sys.path (for ``red_megatron``) and, without CUDA, sets
TRITON_INTERPRET=1 so the Triton kernels run on the CPU (smoke mode).
"""
from __future__ import annotations

import datetime
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def run_meta(**extra) -> dict:
    """Date (UTC), device and torch version of this run, plus ``extra``."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, **extra}


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
