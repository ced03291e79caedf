"""Per-step metrics: JSONL (the source of truth), TensorBoard, optional W&B, and a console view.

Every RED_SPEC.md metric arrives here as a flat ``{name: number}`` dict from the trainer;
this module only writes. Histograms (the r̄ distribution) are lists and go to JSONL and
TensorBoard's histogram view.

The console view (``MetricsConfig.progress``): on a terminal a live rich bar; anywhere else
(a Slurm job, a pipe, a file) one plain line every ``log_every`` steps and at the last step, e.g.

  [red] step 30/200 reward=0.412 acc=0.391 H_rl=0.873 H_sft=0.512 w=0.214 loss=0.0132 gnorm=0.41 tok/s=5120 elapsed=0:12:04 ETA=1:08:25

Both show the same keys (PROGRESS_KEYS), times in full (H:MM:SS).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from red_megatron.errors import UserError

# The console view shows these, in this order, when present: (metric key, label, format).
PROGRESS_KEYS = (("reward/mean", "reward", ".3f"), ("reward/online_accuracy", "acc", ".3f"),
                 ("entropy/h_rl", "H_rl", ".3f"), ("entropy/h_sft", "H_sft", ".3f"), ("red/w", "w", ".3f"),
                 ("optim/loss", "loss", ".4g"), ("optim/grad_norm", "gnorm", ".3g"),
                 ("throughput/tokens_per_s", "tok/s", ".0f"))
# Metrics that are counts per bin over [0, 1] (bin i holds the values nearest i / (bins - 1)):
# TensorBoard gets them as a histogram of the values, not as a list of counts.
BINNED_UNIT_HISTOGRAMS = ("red/rbar_hist",)
AUTO_LINES = 100  # log_every=0: at most ~this many plain lines a run (every step up to 100 steps)


@dataclass(kw_only=True)
class MetricsConfig:
    tensorboard: bool = True  # write TensorBoard events to run_dir/tensorboard
    wandb_project: str | None = None  # W&B only when asked for and installed (WANDB_MODE=offline works)
    progress: bool = True  # the console view: a bar on a terminal, plain lines elsewhere
    # plain lines (stdout not a terminal): one every log_every steps and at the last one;
    # 0 = automatic: every step for runs up to 100 steps, else every ceil(steps / 100)
    log_every: int = 0

    def __post_init__(self):
        if self.wandb_project is not None and not self.wandb_project.strip():
            raise ValueError("metrics.wandb_project: expected a non-empty project name or None")
        if not isinstance(self.log_every, int) or isinstance(self.log_every, bool) or self.log_every < 0:
            raise ValueError(f"metrics.log_every must be an int >= 0 (0: automatic), got {self.log_every!r}")


def _jsonable(value: Any):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible rather than drop them
    return value


def format_duration(seconds: float) -> str:
    """H:MM:SS in full (hours unbounded); "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """``reward=0.412 acc=0.391 ...``: the PROGRESS_KEYS present in ``metrics``; a NaN is absent (grpo has no
    offline samples, so no H_sft)."""
    parts = []
    for key, label, fmt in PROGRESS_KEYS:
        v = metrics.get(key)
        if (isinstance(v, (int, float)) or hasattr(v, "item")) and math.isfinite(float(v)):
            parts.append(f"{label}={format(float(v), fmt)}")
    return " ".join(parts)


def unit_bins_histogram(counts) -> dict[str, Any]:
    """TensorBoard's raw histogram of the values that ``counts`` (bins over [0, 1]) stand for."""
    counts = [float(c) for c in counts]
    n = len(counts)
    centers = [i / (n - 1) if n > 1 else 0.5 for i in range(n)]
    half = 0.5 / (n - 1) if n > 1 else 0.5
    used = [c for c, k in zip(centers, counts) if k > 0]
    return dict(min=min(used), max=max(used), num=sum(counts), sum=sum(c * k for c, k in zip(centers, counts)),
                sum_squares=sum(c * c * k for c, k in zip(centers, counts)),
                bucket_limits=[c + half for c in centers], bucket_counts=counts)


class MetricsLogger:
    """Writes one JSON line per step to ``run_dir/metrics.jsonl`` (appending on resume).

    The file is only appended to, never rewritten: a resume replays the steps after its checkpoint and
    appends them (``read_metrics`` keeps a step's last record, the one the weights followed); a run
    that would retrain from step 0 over logged steps is refused before it starts (config.check_resume).
    ``resume=False`` (a fresh start in a used run dir) moves an existing file aside to
    ``metrics.jsonl.prev<N>``. A line torn by a kill mid-write is cut off before appending.

    ``tty``: whether the console is a terminal (default: ``sys.stdout.isatty()``); ``stream``: where
    the plain lines go (default: stdout); ``width``: the terminal's columns for the bar (default: the
    terminal's own, 200 on a ``stream``).
    """

    def __init__(self, run_dir: str | Path, cfg: MetricsConfig, *, total_steps: int, enabled: bool = True,
                 tty: bool | None = None, stream=None, width: int | None = None, resume: bool = True):
        self.cfg, self.total_steps, self.enabled = cfg, total_steps, enabled
        self.run_dir = Path(run_dir)
        self._tb = self._wandb = self._progress = None
        self._stream = stream
        self._t0, self._first_step = time.monotonic(), None
        self.every = cfg.log_every or max(1, math.ceil(total_steps / AUTO_LINES))
        self._lines = False
        self.held_steps: set[int] = set()  # the steps the file holds (read at start, then as logged)
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.held_steps = _prepare_jsonl(self.run_dir / "metrics.jsonl", resume)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError as e:  # asked for explicitly, so say it loudly
                raise ValueError("metrics.wandb_project is set but wandb is not installed "
                                 "(pip install wandb; WANDB_MODE=offline needs no account)") from e
            self._wandb = wandb.init(project=cfg.wandb_project, dir=str(self.run_dir))
        if cfg.progress:
            is_tty = (stream or sys.stdout).isatty() if tty is None else tty
            if is_tty:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
                from rich.table import Column

                console = Console(file=stream, force_terminal=True, width=width or 200) if stream is not None else \
                    Console(width=width) if width else None
                # the step, elapsed and ETA keep their width; the metrics take what is left and end in "…"
                # (an 80-column terminal dropped the step count and times for them)
                metrics_col = Column(no_wrap=True, overflow="ellipsis", ratio=1)
                self._progress = Progress(TextColumn("[bold]RED"), BarColumn(bar_width=12),
                                          TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                          TextColumn("ETA"), TimeRemainingColumn(),
                                          TextColumn("{task.description}", table_column=metrics_col),
                                          transient=False, console=console, expand=True)
                self._task = self._progress.add_task("", total=total_steps)
                self._progress.start()
            else:
                self._lines = True

    def _tb_write(self, step: int, metrics: dict[str, Any]) -> None:
        import torch

        for key, value in metrics.items():
            if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
                if not len(value):
                    continue
                if key in BINNED_UNIT_HISTOGRAMS:
                    if sum(float(c) for c in value) > 0:
                        self._tb.add_histogram_raw(key, global_step=step, **unit_bins_histogram(value))
                else:
                    self._tb.add_histogram(key, torch.as_tensor(value, dtype=torch.float32), step)
            elif isinstance(value, (int, float)) or hasattr(value, "item"):
                self._tb.add_scalar(key, float(value), step)

    def _wandb_record(self, record: dict[str, Any]) -> dict[str, Any]:
        import wandb

        out = {}
        for k, v in record.items():
            if k in ("step", "time"):
                continue
            if k in BINNED_UNIT_HISTOGRAMS and isinstance(v, list) and v:
                h = unit_bins_histogram(v)
                width = h["bucket_limits"][1] - h["bucket_limits"][0] if len(v) > 1 else 1.0
                edges = [h["bucket_limits"][0] - width] + h["bucket_limits"]
                out[k] = wandb.Histogram(np_histogram=(h["bucket_counts"], edges))
            elif isinstance(v, (int, float)):
                out[k] = v
        return out

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        """The plain console line of a step (elapsed and ETA measured since this logger's first step)."""
        if self._first_step is None:
            self._first_step = step - 1
        elapsed = time.monotonic() - self._t0
        done = step - self._first_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        return (f"[red] step {step}/{self.total_steps} {format_metrics(metrics)} "
                f"elapsed={format_duration(elapsed)} ETA={format_duration(eta)}").replace("  ", " ")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self.held_steps.add(step)
        if self._tb is not None:
            self._tb_write(step, metrics)
        if self._wandb is not None:
            self._wandb.log(self._wandb_record(record), step=step)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, description=format_metrics(metrics))
        elif self._lines:
            text = self.line(step, metrics)  # always computed: it keeps the ETA's start
            if step % self.every == 0 or step >= self.total_steps:
                print(text, file=self._stream or sys.stdout, flush=True)

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


def _prepare_jsonl(path: Path, resume: bool) -> set[int]:
    """The steps ``path`` holds (after cutting a torn last line); with ``resume=False`` the file is
    moved aside first (to ``<name>.prev<N>``), so nothing logged is ever overwritten."""
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    if not resume:
        n = 1
        while path.with_name(f"{path.name}.prev{n}").exists():
            n += 1
        path.rename(path.with_name(f"{path.name}.prev{n}"))
        logging.getLogger(__name__).warning("resume=false: the earlier %s moved to %s.prev%d", path, path.name, n)
        return set()
    data = path.read_bytes()
    if not data.endswith(b"\n"):  # killed mid-write: the torn line would glue onto the next record
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
        data = data[:data.rfind(b"\n") + 1]
    held = set()
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                held.add(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"unreadable line {n} in {path}: expected a JSON record with a 'step' "
                                f"({type(e).__name__}); move the file aside to start a fresh log") from None
    return held


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics of a run, one dict per step; a resumed run's replayed steps keep the last record."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run directory")
    by_step: dict[int, dict] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:  # a kill mid-write can leave a torn last line
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def setup_run_logging(run_dir: str | Path, *, verbose: bool = False, rank: int = 0) -> Path:
    """The console shows the project's own log lines (``red_megatron.*``: INFO on stdout, warnings on stderr);
    everything else, megatron's and vLLM's INFO config dumps and Python warnings ("Apex is not installed",
    deprecations), goes to ``run_dir/logs/library.log`` (``library.rank<N>.log`` on rank N > 0). ``verbose``:
    the console gets every logger at DEBUG as well. Call before megatron or vLLM is imported. Returns the log
    file's path. (What the libraries write to file descriptor 2 itself: red_megatron/console.py.)
    """
    import logging
    import os

    log_dir = Path(run_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / ("library.log" if rank == 0 else f"library.rank{rank}.log")
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_red_run_logging", False):
            root.removeHandler(h)
            h.close()
    file_h = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_h.setFormatter(fmt)
    file_h.setLevel(logging.DEBUG if verbose else logging.INFO)
    # the project's INFO lines go to stdout beside the progress lines, its warnings to stderr: a refusal is
    # then the one line a failed run leaves on stderr, whenever it comes (issue 29)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda r: r.levelno < logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    for h in (out, console):
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s" if not verbose else
                                         "%(asctime)s %(name)s %(levelname)s %(message)s"))
        if not verbose:
            h.addFilter(lambda r: r.name == "red_megatron" or r.name.startswith("red_megatron."))
    if rank != 0 and not verbose:
        out.setLevel(logging.WARNING)  # nothing: the other ranks' console shows their warnings only
    for h in (file_h, out, console):
        h._red_run_logging = True
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the file
    if not verbose and os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0" \
            and "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        # vLLM installs its own stdout handler; a logging config (read by every vLLM process, the
        # engine-core subprocess on GPUs too) sends its loggers to the same file instead
        # one file per rank (each names its own log), written whole then renamed: ranks that shared
        # one file could read each other's half-written copy (CI, tp2_infer2: "Extra data ... char 522")
        vcfg = log_dir / ("vllm_logging.json" if rank == 0 else f"vllm_logging.rank{rank}.json")
        tmp = vcfg.with_name(vcfg.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path.resolve()), "mode": "a",
                                  "encoding": "utf-8", "formatter": "plain", "level": "INFO"}},
            "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}},
        }, indent=1))
        tmp.replace(vcfg)
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(vcfg.resolve())
    return path
