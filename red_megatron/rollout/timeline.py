"""The run's timeline: who was busy with what, when (rank 0's clock), for the timeline plot and the
busy/idle metrics of disaggregated and partial rollouts."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class Timeline:
    """(process, stage, t0, t1, step) intervals on rank 0's clock, for the timeline plot and busy/idle metrics."""

    def __init__(self):
        self.t_start = time.perf_counter()
        self.events: list[tuple[str, str, float, float, int]] = []
        self.staleness_hist: dict[int, int] = {}  # staleness (of the oldest token) -> online samples trained at it
        self.span_hist: dict[int, int] = {}  # partial rollouts: policy versions a sample spans -> samples
        self._lock = threading.Lock()

    def add(self, process: str, stage: str, t0: float, t1: float, step: int) -> None:
        with self._lock:
            self.events.append((process, stage, t0 - self.t_start, t1 - self.t_start, step))

    def busy(self, since: float) -> dict[tuple[str, str], float]:
        """Seconds each (process, stage) was busy after ``since`` (rank 0 clock, relative)."""
        out: dict[tuple[str, str], float] = {}
        with self._lock:
            for proc, stage, t0, t1, _ in self.events:
                if t1 > since:
                    out[(proc, stage)] = out.get((proc, stage), 0.0) + t1 - max(t0, since)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"events": [dict(process=p, stage=s, t0=a, t1=b, step=k)
                                              for p, s, a, b, k in self.events],
                                   "staleness_hist": {str(k): v for k, v in sorted(self.staleness_hist.items())},
                                   "span_hist": {str(k): v for k, v in sorted(self.span_hist.items())}}))
        tmp.replace(path)
