"""Per-step metrics: JSONL (the source of truth), TensorBoard, optional W&B, a live progress line.

Every RED_SPEC.md metric arrives here as a flat ``{name: number}`` dict from the trainer;
this module only writes. Histograms (the r̄ distribution) are lists and go to JSONL and
TensorBoard's histogram view.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The progress line shows these, in this order, when present.
_PROGRESS_KEYS = (("reward/online_accuracy", "acc"), ("reward/mean", "reward"), ("entropy/h_rl", "H_rl"),
                  ("entropy/h_sft", "H_sft"), ("red/w", "w"), ("loss/policy", "loss"))


@dataclass(kw_only=True)
class MetricsConfig:
    tensorboard: bool = True
    wandb_project: str | None = None  # W&B only when asked for and installed
    progress: bool = True

    def __post_init__(self):
        if self.wandb_project is not None and not self.wandb_project.strip():
            raise ValueError("metrics.wandb_project: expected a non-empty project name or None")


def _jsonable(value: Any):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than drop them
    return value


class MetricsLogger:
    """Writes one JSON line per step to ``run_dir/metrics.jsonl`` (appending on resume)."""

    def __init__(self, run_dir: str | Path, cfg: MetricsConfig, *, total_steps: int, enabled: bool = True):
        self.cfg, self.total_steps, self.enabled = cfg, total_steps, enabled
        self.run_dir = Path(run_dir)
        self._tb = self._wandb = self._progress = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError as e:  # asked for explicitly, so say it loudly
                raise ValueError("metrics.wandb_project is set but wandb is not installed") from e
            self._wandb = wandb.init(project=cfg.wandb_project, dir=str(self.run_dir))
        if cfg.progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]RED"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                      TimeElapsedColumn(), TextColumn("{task.description}"), transient=False)
            self._task = self._progress.add_task("", total=total_steps)
            self._progress.start()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        for key, value in metrics.items():
            if self._tb is None:
                break
            if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
                if len(value):
                    import torch

                    self._tb.add_histogram(key, torch.as_tensor(value, dtype=torch.float32), step)
            elif isinstance(value, (int, float)) or hasattr(value, "item"):
                self._tb.add_scalar(key, float(value), step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)
        if self._progress is not None:
            desc = "  ".join(f"{short}={float(metrics[k]):.3f}" for k, short in _PROGRESS_KEYS if k in metrics)
            self._progress.update(self._task, completed=step, description=desc)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics of a run, one dict per step; a resumed run's repeated steps keep the last."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run directory")
    by_step: dict[int, dict] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:  # a kill mid-write can leave a torn last line
            if n == len(path.read_text().splitlines()):
                break
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]
