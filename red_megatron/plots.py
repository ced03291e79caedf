"""Turn a run directory's metrics.jsonl into PNGs.

- entropy_dynamics.png: H^rl, H^sft and the offline weight w over steps (the paper's Figure 6);
- reward.png: mean reward, online and offline accuracy;
- response_length.png: mean online response length;
- timeline.png (disaggregated runs, from timeline.json): rollout / train / refit per process over the run.
Every axis is labelled; legends sit below the axes (outside the data) and figures are saved with
``bbox_inches="tight"`` so nothing is cut.
``plot_runs_side_by_side`` draws several runs' entropy dynamics in one figure (the preset study).
"""
from __future__ import annotations

from pathlib import Path

from red_megatron.metrics import read_metrics


def _series(records, key):
    xs = [r["step"] for r in records if isinstance(r.get(key), (int, float))]
    ys = [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return xs, ys


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _entropy_axes(ax, records, title):
    for key, label in (("entropy/h_rl", "H^rl (online)"), ("entropy/h_sft", "H^sft (offline)")):
        ax.plot(*_series(records, key), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("mean token entropy")
    ax.set_title(title)
    twin = ax.twinx()
    twin.plot(*_series(records, "red/w"), color="black", linestyle="--", label="w")
    twin.set_ylabel("offline weight w")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    _legend_below(ax, lines, [line.get_label() for line in lines])


def _legend_below(ax, handles=None, labels=None):
    """A legend under the axes (below the x label): it never covers a curve."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(3, len(handles)),
              fontsize=8, framealpha=0.9)


def _lines(plt, records, path: Path, title: str, series, ylabel: str, ylim=None) -> Path:
    """One figure of metric curves over steps."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in series:
        ax.plot(*_series(records, key), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    _legend_below(ax)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no steps to plot")
    out = Path(out_dir or Path(run_dir) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    _entropy_axes(ax, records, "Entropy dynamics")
    fig.tight_layout()
    written.append(out / "entropy_dynamics.png")
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    written.append(_lines(plt, records, out / "reward.png", "Reward and accuracy", (
        ("reward/mean", "mean reward (all samples)"), ("reward/online_accuracy", "online accuracy"),
        ("reward/offline_accuracy", "offline accuracy")), "reward / accuracy", ylim=(-0.05, 1.05)))
    written.append(_lines(plt, records, out / "response_length.png", "Response length", (
        ("response/online_mean_length", "online response length"),), "tokens"))
    if (Path(run_dir) / "timeline.json").is_file():  # a disaggregated run (docs/ASYNC.md)
        written.append(plot_timeline(Path(run_dir) / "timeline.json", out / "timeline.png"))
    return written


def plot_runs_side_by_side(run_dirs: dict[str, Path], out_path: str | Path) -> Path:
    """One entropy-dynamics panel per run (e.g. per preset), in a row-major grid."""
    plt = _plt()
    n = len(run_dirs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, (name, run_dir) in zip(axes.flat, run_dirs.items()):
        _entropy_axes(ax, read_metrics(run_dir), name)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out_path


_STAGE_COLORS = {"rollout": "tab:blue", "train": "tab:orange", "old_logprobs": "tab:olive", "refit": "tab:green",
                 "refit gather": "tab:green", "refit broadcast": "tab:cyan", "rollout wait": "lightgrey",
                 "verify": "tab:purple", "engine start": "black"}


def plot_timeline(timeline_json: str | Path, out_path: str | Path) -> Path:
    """Rollout / train / refit intervals per process over a run (the disaggregated loop's timeline.json,
    red_megatron/rollout/timeline.py): one row per process, one colour per stage."""
    import json

    events = json.loads(Path(timeline_json).read_text())["events"]
    if not events:
        raise ValueError(f"{timeline_json} holds no events to plot")
    plt = _plt()
    procs = sorted({e["process"] for e in events}, key=lambda p: (not p.startswith("trainer"), p))
    fig, ax = plt.subplots(figsize=(9, 2.4 + 0.5 * len(procs)))
    seen = set()
    for e in events:
        if e["stage"] == "engine start":
            continue
        y = procs.index(e["process"])
        label = None if e["stage"] in seen else e["stage"]
        seen.add(e["stage"])
        ax.barh(y, e["t1"] - e["t0"], left=e["t0"], height=0.6, color=_STAGE_COLORS.get(e["stage"], "tab:red"),
                label=label)
    ax.set_yticks(range(len(procs)), procs)
    ax.set_xlabel("seconds since rank 0 started the engines (rank 0's clock)")
    ax.set_ylabel("process")
    ax.set_title("Timeline: rollout / train / refit per process")
    handles, labels = ax.get_legend_handles_labels()  # below the x label: the axes are short here
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22 - 0.6 / len(procs)), ncol=4,
              fontsize=8, framealpha=0.9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_path
