"""The nine-preset study: every RED_SPEC.md preset (the paper's Table 2 rows) on the synthetic task.

  python scripts/preset_study.py                      # small default: tiny_cpu_study, < 30 min on 2 CPU cores
  python scripts/preset_study.py --steps 60 --eval-samples 8 --parallel 1 data.global_batch_size=32  # larger
  python scripts/preset_study.py --presets grpo,red --out runs/study_quick

Same starting checkpoint, same data and seed, and the same rollout budget for every preset
(steps × prompts × G online samples; ``sft`` has none). For the tiny random-init recipes the
starting checkpoint is a weak base trained first (--base-sft-steps, default 30 SFT steps on the
traces), so that online samples are sometimes right from the first step, as with a pretrained
model; the other recipes (pretrained checkpoints) start from their model_dir (default 0). Without --preset-schedule every run takes the recipe's steps
and lr (``sft_then_grpo``: that many SFT steps, then that many GRPO steps); with it, presets keep
their own schedules (sft: lr 5e-5, 3 epochs). Each preset trains in its own process
(scripts/train.py; torchrun with --nproc > 1) and its final checkpoint is evaluated with
the paper's protocol (scripts/eval.py, T=0.6, avg@k over the held-out split; the initial
checkpoint too). Writes, under --out: runs/<preset>/, eval/<preset>/results.json, study.json,
entropy_dynamics.png; and the markdown report (--report, default
benchmarks/reports/preset_study_<date>.md) with the table and the plot beside it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # a clone: the cells run its scripts/train.py and scripts/eval.py


def build_parser() -> argparse.ArgumentParser:
    from red_megatron.cli.common import Parser  # a bad flag is a refusal: one line, exit 2

    ap = Parser(prog="red-study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from red_megatron import __version__

    ap.add_argument("--debug", action="store_true", help="print the traceback of a refusal too (also: RED_DEBUG=1)")
    ap.add_argument("--version", action="version", version=f"red-study (red-megatron) {__version__}")
    ap.add_argument("--recipe", default="tiny_cpu_study")
    ap.add_argument("--out", default=str(REPO / "runs" / "preset_study"))
    ap.add_argument("--presets", default="all", help="comma-separated preset names, or 'all' (RED_SPEC order)")
    ap.add_argument("--steps", type=int, default=None, help="RL steps per preset (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0, help="one seed for every run (sampling, data order, init)")
    ap.add_argument("--eval-samples", type=int, default=4, help="samples per held-out row (avg@k)")
    ap.add_argument("--eval-max-tokens", type=int, default=None, help="default: the recipe's eval max_tokens")
    ap.add_argument("--parallel", type=int, default=2, help="training processes at once (CPU: 2 cores)")
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes per run (GPU: GPUs per run)")
    ap.add_argument("--report", default=None, help="markdown report path (default benchmarks/reports/...)")
    ap.add_argument("--preset-schedule", action="store_true",
                    help="let presets keep their own lr/epochs (sft: 5e-5, 3 epochs) instead of equal steps and lr")
    ap.add_argument("--base-sft-steps", type=int, default=None,
                    help="first train a base checkpoint with this many SFT steps on the traces and start every "
                         "preset from it (a weak model that sometimes solves the task, as a pretrained base "
                         "does); 0: start from the recipe's model_dir. Default: 30 for the tiny random-init "
                         "recipes (tiny_cpu_study: ~11%% held-out), 0 for the others (pretrained checkpoints)")
    ap.add_argument("--fresh", action="store_true", help="delete --out first instead of reusing finished runs")
    ap.add_argument("overrides", nargs="*", help="section.field=value overrides applied to every run")
    return ap


def final_stage_dir(run_dir: Path, preset: str) -> Path:
    """Where the run's last stage keeps metrics and the exported checkpoint (the trainer's layout)."""
    from red_megatron.algo.presets import preset_stages

    stages = preset_stages(preset)
    return run_dir if len(stages) == 1 else run_dir / f"stage{len(stages) - 1}_{stages[-1].name}"


def _env() -> dict:
    # one thread a process: results do not depend on how many runs share the machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def train_one(args, preset: str, run_dir: Path, extra: tuple[str, ...] = ()) -> dict:
    hf = final_stage_dir(run_dir, preset) / "hf"
    if (hf / "config.json").exists() and (run_dir / "train.log").exists():
        return {"preset": preset, "rc": 0, "seconds": None, "reused": True}
    cmd = [sys.executable, str(REPO / "scripts" / "train.py")]
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               str(REPO / "scripts" / "train.py")]
    cmd += ["--recipe", args.recipe, "--run-dir", str(run_dir), f"algo.preset={preset}", f"seed={args.seed}",
            f"use_preset_schedule={str(args.preset_schedule).lower()}",
            *([f"steps={args.steps}"] if args.steps else []), *args.overrides, *extra]
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run_dir / "train.log.partial", "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    (run_dir / "train.log.partial").rename(run_dir / ("train.log" if rc == 0 else "train.failed.log"))
    print(f"[study] {preset}: train rc={rc} in {time.time() - t0:.0f} s", flush=True)
    return {"preset": preset, "rc": rc, "seconds": time.time() - t0, "reused": False}


def eval_one(args, cfg, name: str, model: Path, out: Path) -> dict | None:
    if not (out / "results.json").exists():
        cmd = [sys.executable, str(REPO / "scripts" / "eval.py"), "--model", str(model), "--name", name,
               "--out", str(out), f"eval.data_path={cfg.eval.data_path}",
               f"eval.protocol.temperature={cfg.eval.protocol.temperature}",
               f"eval.protocol.max_tokens={args.eval_max_tokens or cfg.eval.protocol.max_tokens}",
               f"eval.protocol.seed={args.seed}", f"eval.protocol.samples_per_row={args.eval_samples}",
               f"rollout.dtype={cfg.rollout.dtype}", "reward.num_workers=1",
               f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}"]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "eval.log", "w") as log:
            rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"[study] {name}: eval failed (rc={rc}), see {out / 'eval.log'}", flush=True)
            return None
    return json.loads((out / "results.json").read_text())


def train_summary(metrics_dir: Path, last: int = 3) -> dict:
    """Training-side numbers from the last stage's metrics.jsonl: the end of the run, averaged over ``last`` steps."""
    from red_megatron.metrics import read_metrics

    try:
        recs = read_metrics(metrics_dir)
    except FileNotFoundError:
        return {}

    def tail(key):
        vals = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
        return sum(vals[-last:]) / len(vals[-last:]) if vals else None

    def first(key):
        vals = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
        return vals[0] if vals else None

    return {"steps": len(recs), "online_acc": tail("reward/online_accuracy"), "h_rl_first": first("entropy/h_rl"),
            "h_rl_last": tail("entropy/h_rl"), "h_sft_last": tail("entropy/h_sft"), "w_last": tail("red/w"),
            "w_mean": (lambda v: sum(v) / len(v) if v else None)([r["red/w"] for r in recs
                                                                  if isinstance(r.get("red/w"), (int, float))]),
            "resp_len": tail("response/online_mean_length")}


def _f(x, fmt):
    return "–" if x is None else format(x, fmt)


def render_report(rows: list[dict], initial: dict | None, meta: dict, plot: str | None) -> str:
    lines = [f"# Preset study ({meta['date']})", "",
             "Every RED_SPEC.md preset (the paper's Table 2 rows) trained on the synthetic task from the same "
             f"starting checkpoint with the same seed and rollout budget; device: {meta['device']}.", "",
             "Setup: " + meta["setup"], "",
             "| preset | held-out Acc (%) | LEN | train online acc (last 3 steps) | H^rl first → last | w (mean / last) "
             "| train s |", "|---|---|---|---|---|---|---|"]
    if initial:
        lines.append(f"| (initial checkpoint) | {initial['acc']:.2f} | {initial['len']:.1f} | – | – | – | – |")
    for r in rows:
        ev, tr = r.get("eval"), r.get("train", {})
        acc = f"{ev['acc']:.2f}" if ev else f"failed (train rc={r['rc']})" if r["rc"] else "eval failed"
        lines.append(f"| {r['preset']} | {acc} | {_f(ev and ev['len'], '.1f')} | {_f(tr.get('online_acc'), '.3f')} | "
                     f"{_f(tr.get('h_rl_first'), '.3f')} → {_f(tr.get('h_rl_last'), '.3f')} | "
                     f"{_f(tr.get('w_mean'), '.2f')} / {_f(tr.get('w_last'), '.2f')} | {_f(r.get('seconds'), '.0f')} |")
    ranked = sorted((r for r in rows if r.get("eval")), key=lambda r: -r["eval"]["acc"])
    lines += ["", "Order by held-out accuracy: " + " > ".join(f"{r['preset']} ({r['eval']['acc']:.1f})" for r in ranked),
              "", "Notes: held-out Acc = avg@k at T=0.6 over the held-out split (red_megatron.eval; k in the setup "
              "line); LEN = mean response tokens. `sft` has no rollouts (its H^rl and w are empty); for "
              "`sft_then_grpo` the training columns are its GRPO stage's. A small CPU study is noisy: read "
              "differences of a few points as ties."]
    if plot:
        lines += ["", f"![entropy dynamics per preset]({plot})"]
    return "\n".join(lines) + "\n"


def base_sft_steps(args) -> int:
    """--base-sft-steps, or its default: 30 for the tiny random-init recipes, 0 (no base) for the others."""
    n = args.base_sft_steps if args.base_sft_steps is not None else 30 if args.recipe.startswith("tiny_cpu") else 0
    if n < 0:
        raise ValueError(f"--base-sft-steps must be >= 0, got {n}")
    return n


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from configs import get_recipe
    from red_megatron.algo.presets import PRESETS
    from red_megatron.overrides import apply_overrides
    from red_megatron.plots import plot_runs_side_by_side

    presets = list(PRESETS) if args.presets == "all" else [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        print(f"unknown preset(s) {unknown}; valid: {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    try:
        args.base_sft_steps = base_sft_steps(args)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    # validate every run's config here, before minutes of training; the CPU recipes' files are made once
    from red_megatron.study.assets import ENSURE, ensure

    if args.recipe in ENSURE:
        ensure(args.recipe)
    common = [f"seed={args.seed}", f"use_preset_schedule={str(args.preset_schedule).lower()}"]
    common += [f"steps={args.steps}"] if args.steps else []
    base = apply_overrides(get_recipe(args.recipe), common + list(args.overrides))
    for p in presets:
        apply_overrides(base, [f"algo.preset={p}"])
    if base.eval.data_path is None:
        print(f"recipe {args.recipe} has no eval.data_path (held-out split); set eval.data_path=...", file=sys.stderr)
        return 2
    t0 = time.time()
    start, extra = Path(base.model_dir), ()
    if args.base_sft_steps > 0:  # every preset starts from this weak SFT model instead of the random init
        b = train_one(args, "sft", out / "base", (f"steps={args.base_sft_steps}",))
        if b["rc"] != 0:
            print(f"[study] training the base checkpoint failed, see {out / 'base'}", file=sys.stderr)
            return 1
        start = out / "base" / "hf"
        extra = (f"model_dir={start}",)
    print(f"[study] {len(presets)} presets × {base.steps} steps × {base.data.global_batch_size} prompts × "
          f"(G={base.algo.num_online} + 1) from {start} -> {out}", flush=True)

    def train_and_eval(p: str) -> dict:  # each worker evaluates its run at once: evals overlap other trainings
        r = train_one(args, p, out / "runs" / p, extra)
        stage_dir = final_stage_dir(out / "runs" / p, p)
        r["train"] = train_summary(stage_dir)
        r["eval"] = eval_one(args, base, p, stage_dir / "hf", out / "eval" / p) if r["rc"] == 0 else None
        return r

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        first = pool.submit(eval_one, args, base, "initial checkpoint", start, out / "eval" / "initial")
        rows = list(pool.map(train_and_eval, presets))
        initial = first.result()
    plot = None
    plottable = {r["preset"]: final_stage_dir(out / "runs" / r["preset"], r["preset"]) for r in rows
                 if (final_stage_dir(out / "runs" / r["preset"], r["preset"]) / "metrics.jsonl").exists()}
    date = datetime.date.today().isoformat()
    report = Path(args.report or REPO / "benchmarks" / "reports" / f"preset_study_{date}.md")
    if plottable:
        png = plot_runs_side_by_side(plottable, out / "entropy_dynamics.png")
        report.parent.mkdir(parents=True, exist_ok=True)
        dst = report.with_name(report.stem + "_entropy.png")
        shutil.copyfile(png, dst)
        plot = dst.name
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    setup = (f"recipe `{args.recipe}`, {base.steps} RL steps × {base.data.global_batch_size} prompts × "
             f"(G={base.algo.num_online} online + 1 offline), seed {args.seed}, "
             + (f"every preset starts from a base checkpoint made by {args.base_sft_steps} SFT steps on the traces "
                f"(the initial-checkpoint row), " if args.base_sft_steps > 0 else "every preset starts from the "
                f"recipe's checkpoint `{Path(base.model_dir).name}`, ")
             + f"policy lr {base.policy.lr:g} "
             + ("(presets keep their own lr/epochs: sft 5e-5, 3 epochs)" if args.preset_schedule else
                "for every preset (use_preset_schedule=false: equal steps and lr, sft included)")
             + f", eval avg@{args.eval_samples} on "
             f"`{Path(base.eval.data_path).name}` at T={base.eval.protocol.temperature}, "
             f"{args.eval_max_tokens or base.eval.protocol.max_tokens} max tokens; overrides: "
             f"{' '.join(args.overrides) or 'none'}; total wall time {time.time() - t0:.0f} s")
    meta = {"date": date, "device": device, "setup": setup}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(rows, initial, meta, plot))
    (out / "study.json").write_text(json.dumps({"meta": meta, "initial": initial, "rows": rows}, indent=1,
                                               default=str))
    print(report.read_text())
    print(f"[study] report {report}; runs {out / 'runs'} ({time.time() - t0:.0f} s)")
    return 0 if all(r["rc"] == 0 and r.get("eval") for r in rows) else 1


if __name__ == "__main__":  # red-study (red_megatron.cli.study) runs this main through the same handler
    from red_megatron.errors import run_cli

    sys.exit(run_cli(main))
