"""The tiny CPU recipe at rollout.max_staleness k=1 against k=0 (disaggregated, one engine process),
and the colocated loop for wall time: reward, length, entropy and w curves in one figure, wall times.

    python benchmarks/async_tiny.py [--steps 40] [--out benchmarks/reports]

Writes async_tiny_<date>.json and async_tiny_<date>.png (the markdown report is written by hand from
them: benchmarks/reports/async_tiny_2026-12-02.md). Runs one after another (2-core machine).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {"colocated": ["rollout.placement=colocated"],
        "disaggregated k=0": ["rollout.placement=disaggregated", "rollout.max_staleness=0"],
        "disaggregated k=1": ["rollout.placement=disaggregated", "rollout.max_staleness=1"]}
CURVES = (("reward/online_accuracy", "online accuracy"), ("response/online_mean_length", "online response length"),
          ("entropy/h_rl", "H^rl (online entropy)"), ("red/w", "offline weight w"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "reports"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "async_tiny"))
    args = ap.parse_args(argv)
    from red_megatron.study.assets import ensure

    ensure("tiny_cpu")  # the recipe's checkpoint and splits (recipes build no files)
    from red_megatron.metrics import read_metrics
    from red_megatron.plots import _legend_below, _plt, _series

    date = datetime.date.today().isoformat()
    out, work = Path(args.out), Path(args.work)
    results = {}
    for name, overrides in RUNS.items():
        run = work / name.replace(" ", "_").replace("=", "")
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--recipe", "tiny_cpu", "--run-dir", str(run),
               "metrics.progress=false", "export_hf=false", "resume=false", "overwrite=true", f"steps={args.steps}",
               *overrides]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=3600)
        wall = time.perf_counter() - t0
        recs = read_metrics(run)
        keys = ("time/rollout", "time/old_logprobs", "time/train", "time/refit")
        results[name] = {"wall_s": wall, "run_dir": str(run), "records": recs,
                         "mean_stage_s": {k: sum(r.get(k, 0.0) for r in recs) / len(recs) for k in keys}}
        tl = run / "timeline.json"
        if tl.is_file():
            results[name]["staleness_hist"] = json.loads(tl.read_text())["staleness_hist"]
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for name in ("disaggregated k=0", "disaggregated k=1"):
            ax.plot(*_series(results[name]["records"], key), label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        _legend_below(ax)
    fig.suptitle(f"tiny_cpu: k=1 vs k=0 (2-core CPU dev machine, {date})")
    fig.tight_layout()
    png = out / f"async_tiny_{date}.png"
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    summary = {"date": date, "machine": f"2-core CPU dev machine ({platform.processor() or platform.machine()}, "
                                        f"{os.cpu_count()} cores)", "steps": args.steps,
               "runs": {n: {k: v for k, v in r.items() if k != "records"} | {
                   "last10": {key: sum(x[key] for x in r["records"][-10:]) / 10 for key, _ in CURVES}}
                   for n, r in results.items()}}
    (out / f"async_tiny_{date}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
