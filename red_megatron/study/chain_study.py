"""The chain study (../shared/STUDY_DESIGN.md §6.5-6.8): the nine presets and two controls over seeds, from the
cached chain base, evaluated per band, with pass@k, LEN, rates, compute, figures and the claim scorecard.

  python scripts/chain_study.py --steps 100 --seeds 0 --tag smoke                 # the smoke study (one seed)
  python scripts/chain_study.py --steps 150 --seeds 0,1,2 --tag deciding          # the deciding study
  python scripts/chain_study.py --steps 150 --seeds 0,1,2 --tag deciding --analyze-only   # report only

Resumable: every finished (config, seed) training and eval leaves a marker written last and is skipped when
the same command runs again, so the study can be killed at any point and resumed until it completes. The
report (benchmarks/reports/chain_study_<tag>_<date>.md + .json + PNGs) is rewritten after every finished cell.
Configs: the nine presets, `frozen_w` (red at lr 1e-12 for 30 steps) and `red_wconst` (red with
algo.fixed_w = red's mean w of the same seed). The base is the cached chain base whose gate passed
(configs.chain_cpu.chain_base); --allow-failed-gate takes the gated base closest to passing instead (say so in
the report), --base DIR any HF checkpoint. --gpu applies the §6.9 study flags (64 prompts × (7+1), 300 steps,
lr 3e-4 cosine to 0.1, response 1024, avg@32, seeds 0-4) on the GPU task's splits; its base is --base.
Every report first computes the finished cells' missing Table-1 probes (red_megatron.study.probe: seconds
each, cached as probe.json beside each checkpoint; --no-probes skips them).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # a clone: the cells run its scripts/train.py and scripts/eval.py

ALL = ("sft", "grpo", "sft_then_grpo", "mixpolicy", "onpolicy_offline", "luffy", "red_entropy", "red_shift", "red",
       "frozen_w", "red_wconst")
GPU_STEPS, GPU_LR, GPU_RESPONSE = 300, 3e-4, 1024


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="chain-study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="chain_cpu_study")
    ap.add_argument("--tag", default="smoke", help="names the study's folder and report (smoke, deciding, ...)")
    ap.add_argument("--out", default=None, help="default: runs/chain_study/<tag>")
    ap.add_argument("--presets", default="all", help="comma-separated configs (presets, frozen_w, red_wconst) or all")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="N steps per preset (sft_then_grpo: N + N)")
    ap.add_argument("--base", default=None, help="HF checkpoint every preset starts from (default: the gated base)")
    ap.add_argument("--allow-failed-gate", action="store_true",
                    help="no base passed its gate: use the cached base closest to passing (reported)")
    ap.add_argument("--gpu", action="store_true", help="the §6.9 scale-up flag set (needs --base)")
    ap.add_argument("--eval-samples", type=int, default=None, help="samples per test problem (default 16; gpu 32)")
    ap.add_argument("--eval-limit", type=int, default=None, help="test problems per band (default: all 64)")
    ap.add_argument("--parallel", type=int, default=2, help="cells at once (CPU: 2)")
    ap.add_argument("--nproc", type=int, default=1, help="torchrun processes per training run")
    ap.add_argument("--report", default=None, help="default: benchmarks/reports/chain_study_<tag>_<date>.md")
    ap.add_argument("--date", default=None, help="the report's date (default today)")
    ap.add_argument("--notes", default=None, help="a markdown file shown under the report's Notes (observations)")
    ap.add_argument("--analyze-only", action="store_true", help="write the report from the finished cells only")
    ap.add_argument("--no-probes", action="store_true",
                    help="do not compute missing Table-1 probes (cached ones are still reported)")
    ap.add_argument("overrides", nargs="*", help="section.field=value overrides of every training run")
    return ap


def gate_distance(gate: dict) -> float:
    """How far a gate report is from passing: the sum of each failed check's distance to its window (points)."""
    lim = {"easy": (85.0, 100.0), "k=4": (30.0, 85.0), "k>=6": (0.0, 3.0)}
    d = 0.0
    for c in gate["checks"]:
        lo, hi = next(v for k, v in lim.items() if c["name"].startswith(k))
        d += max(0.0, lo - c["value"], c["value"] - hi)
    return d


def pick_base(args) -> tuple[Path, str]:
    """(base HF dir, a sentence on its gate)."""
    if args.base:
        gate = Path(args.base).parent / "gate.json"
        note = (f"gate {'passed' if json.loads(gate.read_text())['passed'] else 'FAILED'} ({gate})"
                if gate.exists() else "no gate report beside it")
        return Path(args.base).resolve(), f"base `{args.base}` given on the command line; {note}"
    from configs.chain_cpu import chain_base
    from red_megatron.study.assets import assets_root

    try:
        return chain_base(0), "the cached chain base of base_seed 0, gate passed"
    except (FileNotFoundError, ValueError) as e:
        if not args.allow_failed_gate:
            raise ValueError(f"{e}\n(--allow-failed-gate: use the cached base closest to passing)") from None
    gates = []
    for g in sorted(Path(assets_root()).glob("chain_base_*/gate.json")):
        rep = json.loads(g.read_text())
        if rep.get("samples_per_problem", 0) >= 32 and (g.parent / "hf" / "config.json").exists():
            gates.append((rep["passed"], -gate_distance(rep), g, rep))
    if not gates:
        raise ValueError(f"no cached chain base with a full gate report under {assets_root()}")
    passed, neg, g, rep = max(gates, key=lambda x: (x[0], x[1]))
    checks = "; ".join(f"{c['name']} {c['value']:.1f} % ({'ok' if c['passed'] else 'FAIL'})" for c in rep["checks"])
    how = "gate passed" if passed else f"NO base passed its gate: this is the one closest to passing, {-neg:.1f} points outside"
    return g.parent / "hf", f"base `{g.parent.name}` ({how}): {checks}"


def gpu_overrides(steps: int) -> list[str]:
    from red_megatron.study.assets import ensure_chain_data
    from red_megatron.study.tasks.chain import gpu_config

    data = ensure_chain_data(gpu_config())
    return [f"data.path={data['train']}", f"eval.data_path={data['test']}", "data.global_batch_size=64",
            "algo.num_online=7", f"policy.lr={GPU_LR:g}", "policy.min_lr_ratio=0.1", f"policy.lr_decay_steps={steps}",
            f"data.max_response_tokens={GPU_RESPONSE}", f"rollout.max_model_len={GPU_RESPONSE + 64}",
            f"eval.protocol.max_tokens={GPU_RESPONSE}", "eval.protocol.samples_per_row=32"]


def probe_config(cfg):
    """The Table-1 probes' settings from the training recipe: chain_val beside its train split, its formatting
    and limits; None (no probes) when that split is absent."""
    from red_megatron.study.probe import ProbeConfig

    val = Path(cfg.data.path).with_name("chain_val.parquet")
    if not val.exists():
        return None
    return ProbeConfig(val_path=str(val), max_prompt_tokens=cfg.data.max_prompt_tokens,
                       max_response_tokens=cfg.data.max_response_tokens, chat_template=cfg.data.chat_template,
                       eos_token=cfg.data.eos_token)


def make_spec(args):
    from configs import get_recipe
    from red_megatron.overrides import apply_overrides
    from red_megatron.study.runner import StudySpec

    configs = list(ALL) if args.presets == "all" else [p.strip() for p in args.presets.split(",") if p.strip()]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    overrides = list(args.overrides)
    steps = args.steps
    if args.gpu:
        if not args.base:
            raise ValueError("--gpu needs --base (a base of the §6.9 GPU task: hidden 512, 8 layers, ~20M tokens)")
        steps = steps or GPU_STEPS
        overrides = gpu_overrides(steps) + overrides
        if args.seeds == "0":
            seeds = [0, 1, 2, 3, 4]
    base, base_note = pick_base(args)
    from red_megatron.study.assets import ENSURE, ensure

    if args.recipe in ENSURE:
        ensure(args.recipe)  # the recipe's splits, made once (recipes build nothing)
    cfg = apply_overrides(get_recipe(args.recipe), [f"model_dir={base}", *([f"steps={steps}"] if steps else []),
                                                    *overrides])
    for c in configs:  # refuse a bad preset or override before minutes of training
        apply_overrides(cfg, [f"algo.preset={'red' if c in ('frozen_w', 'red_wconst') else c}"])
    out = Path(args.out or REPO / "runs" / "chain_study" / args.tag).resolve()
    spec = StudySpec(out=out, base=base, configs=configs, seeds=seeds, recipe=args.recipe, steps=steps,
                     overrides=overrides, eval_samples=args.eval_samples or cfg.eval.protocol.samples_per_row,
                     eval_max_tokens=cfg.eval.protocol.max_tokens, eval_temperature=cfg.eval.protocol.temperature,
                     eval_data=cfg.eval.data_path, eval_per_source_limit=args.eval_limit, parallel=args.parallel, nproc=args.nproc, dtype=cfg.rollout.dtype,
                     max_prompt_tokens=cfg.data.max_prompt_tokens)
    spec.validate()
    return spec, cfg, base_note


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from red_megatron.study.report import write_report

    try:
        spec, cfg, base_note = make_spec(args)
    except ValueError as e:
        print(f"chain_study: {e}", file=sys.stderr)
        return 2
    date = args.date or datetime.date.today().isoformat()
    report = Path(args.report or REPO / "benchmarks" / "reports" / f"chain_study_{args.tag}_{date}.md")
    report.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    device = f"CPU ({os.cpu_count()} cores), one thread a process"
    setup = (f"Recipe `{args.recipe}`{' + the §6.9 GPU flag set' if args.gpu else ''}; {base_note}. "
             f"{spec.steps or cfg.steps} steps × {cfg.data.global_batch_size} prompts × (G={cfg.algo.num_online} "
             f"online + 1 offline) at T={cfg.algo.temperature}, lr {cfg.policy.lr:g} (min_lr_ratio "
             f"{cfg.policy.min_lr_ratio:g}) for every preset (use_preset_schedule=false; sft_then_grpo: N SFT + N "
             f"GRPO steps); seeds {','.join(map(str, spec.seeds))} (seed and data.seed); eval avg@{spec.eval_samples} "
             f"at T={spec.eval_temperature}, {spec.eval_max_tokens} max tokens, on `{Path(spec.eval_data).name}`; "
             f"controls: frozen_w = red at lr 1e-12 for min(30, N) steps, red_wconst = red with w fixed at red's mean w. "
             f"Overrides: {' '.join(args.overrides) or 'none'}. Device: {device}; study dir `{spec.out}`.")

    def progress():
        try:
            _progress()
        except Exception as e:  # a report bug must not stop a study of hours: say it, keep training
            print(f"[study] writing the partial report failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    inv_path = spec.out / "invocations.json"  # the wall time of every (resumed) invocation that ran cells
    recorded = False

    def _progress():
        nonlocal recorded
        past = json.loads(inv_path.read_text()) if inv_path.exists() else []
        now = [] if args.analyze_only or recorded else [time.time() - t0]
        walls = [x["wall_s"] for x in past] + now
        meta = {"title": args.tag, "date": date, "setup": setup + f" Wall time of the study's invocations: "
                f"{' + '.join(f'{w:.0f}' for w in walls) or '–'} s.", "device": device, "base": str(spec.base),
                "eval_name": f"`{Path(spec.eval_data).name}`, avg@{spec.eval_samples} at T={spec.eval_temperature}",
                "notes": Path(args.notes).read_text() if args.notes else None}
        write_report(spec.out, ["base", *spec.configs], spec.seeds, report, meta, Path(spec.eval_data),
                     probe=None if args.no_probes else probe_config(cfg))

    if not args.analyze_only:
        from red_megatron.study.runner import run_study

        spec.out.mkdir(parents=True, exist_ok=True)
        (spec.out / "study_command.txt").write_text(" ".join([sys.executable, *sys.argv]) + "\n")
        try:
            results = run_study(spec, on_progress=progress)
        except ValueError as e:
            print(f"chain_study: {e}", file=sys.stderr)
            return 2
        past = json.loads(inv_path.read_text()) if inv_path.exists() else []
        inv_path.write_text(json.dumps(past + [{"date": date, "wall_s": round(time.time() - t0, 1)}], indent=1))
        recorded = True  # counted once, from the file
        failed = [f"{r['config']}/seed{r['seed']}" for r in results
                  if r["train"].get("rc") != 0 or (r["config"] != "frozen_w" and not r["eval"])
                  or (r["eval"] and r["eval"].get("rc") != 0)]
    else:
        failed = []
    _progress()
    print(report.read_text())
    print(f"[study] report {report} ({time.time() - t0:.0f} s); failed cells: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
