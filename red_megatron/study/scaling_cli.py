"""red-study --sizes: the scaling study's command line (red_megatron/study/scaling.py does the work).

  red-study --sizes s,m,l                                   # CPU: the chain bases of each size, all phases
  red-study --sizes m --phase lr                            # the middle size's lr grid only
  red-study --sizes m --phase variants --variants clean,harsh   # §6.8's premise-off variants, one seed each
  red-study --sizes m=runs/assets/chain_base_x/hf           # a base given by path (its gate.json beside it)
  red-study --sizes 0.5b=/ckpt/Qwen2.5-0.5B,1.5b=/ckpt/Qwen2.5-1.5B,3b=...,7b=... --recipe qwen25_7b \\
      --world-size 8 --check                                # the GPU plan: every run validated, no weights read

A size is ``s``, ``m`` or ``l`` (the chain bases of shapes chain_s 0.48M, chain 1.77M, chain_l 6.97M
parameters, built and gated by scripts/build_chain_base.py --shape) or ``name=DIR`` (any HF checkpoint).
A base must have passed its gate (gate.json beside its hf/ directory) unless --allow-failed-gate.
Resumable: every cell writes its result as it finishes, the same command skips finished cells.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from red_megatron.errors import UserError
from red_megatron.study.scaling import (CPU_SIZES, HEADLINE, LR_MULTS, SIZE_BASE_STEPS, VARIANTS, ScalingSpec, gate_of,
                                        plan_rows, run_scaling)


def build_parser() -> argparse.ArgumentParser:
    from red_megatron.cli.common import Parser  # a bad flag is a refusal: one line, exit 2

    ap = Parser(prog="red-study --sizes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", required=True, help="comma-separated sizes: s, m, l or name=HF_DIR")
    ap.add_argument("--presets", default=",".join(HEADLINE), help="comma-separated presets (and red's controls red_wconst, frozen_w)")
    ap.add_argument("--seeds", default="0,1,2", help="the main phase's seeds")
    ap.add_argument("--lr", type=float, default=None, help="the grid's 1x (default: the recipe's policy.lr)")
    ap.add_argument("--lr-mults", default=",".join(f"{m:g}" for m in LR_MULTS), help="the lr grid, as multiples")
    ap.add_argument("--lr-seed", type=int, default=0, help="the seed of the lr grid")
    ap.add_argument("--phase", default="all", choices=("all", "lr", "main", "variants"),
                    help="variants: STUDY_DESIGN §6.8's premise-off variants, one seed each (after the lr grid)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"with --phase variants: some of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None, help="steps per stage (default: the recipe's)")
    ap.add_argument("--recipe", default="chain_cpu_study")
    ap.add_argument("--base-seed", type=int, default=0, help="which chain base of each CPU size")
    ap.add_argument("--base-steps", default=None,
                    help="SFT steps of each size's base (default: 450, l 1450), e.g. s=450,l=1400")
    ap.add_argument("--allow-failed-gate", action="store_true", help="use a base whose gate failed (reported)")
    ap.add_argument("--val-data", default=None, help="where the lr is chosen (default: chain_val)")
    ap.add_argument("--test-data", default=None, help="what the main phase reports (default: chain_test)")
    ap.add_argument("--eval-samples", type=int, default=16)
    ap.add_argument("--eval-limit", type=int, default=None, help="problems per band (smoke)")
    ap.add_argument("--parallel", type=int, default=2, help="cells at once")
    ap.add_argument("--out", default="runs/scaling", help="the study's directory")
    ap.add_argument("--check", action="store_true", help="validate every run of the plan (config.json only), then stop")
    ap.add_argument("--world-size", type=int, default=None, help="with --check: the job's world size")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    ap.add_argument("--summary-only", action="store_true",
                    help="rewrite scaling.json from the finished cells of --presets, run nothing")
    ap.add_argument("overrides", nargs="*", help="section.field=value overrides of every training run")
    return ap


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}={text!r}: expected comma-separated integers") from None


def resolve_bases(text: str, *, base_seed: int, base_steps: str | None, allow_failed_gate: bool,
                  gated: bool = True) -> dict[str, Path]:
    """{size: HF dir}; a chain size's cached base, or name=DIR. ``gated``: refuse a base whose gate did not pass."""
    steps = {}
    for item in filter(None, (base_steps or "").split(",")):
        name, _, n = item.partition("=")
        if not n.isdigit():
            raise UserError(f"--base-steps: expected size=steps items, got {item!r}")
        steps[name.strip()] = int(n)
    items = [x.strip() for x in text.split(",") if x.strip()]
    names = [x.partition("=")[0] for x in items]
    if len(set(names)) != len(names):
        raise UserError(f"--sizes: size {next(n for n in names if names.count(n) > 1)!r} given twice")
    bases: dict[str, Path] = {}
    for item in items:
        name, eq, path = item.partition("=")
        if eq:
            hf = Path(path).expanduser().resolve()
            if not (hf / "config.json").is_file():
                raise UserError(f"--sizes {item}: {hf} is not an HF checkpoint directory (no config.json)")
        elif name in CPU_SIZES:
            from configs.chain_cpu import BASE_STEPS, base_dir

            n = steps.get(name, SIZE_BASE_STEPS.get(name, BASE_STEPS))
            hf = base_dir(base_seed, n, shape=CPU_SIZES[name]) / "hf"
            if not (hf / "config.json").is_file() or gate_of(hf) is None:
                raise UserError(f"--sizes {name}: no gated chain base of shape {CPU_SIZES[name]} at {hf.parent}; build "
                                f"it: python scripts/build_chain_base.py --shape {CPU_SIZES[name]} "
                                f"--base-seed {base_seed} --steps {n}")
        else:
            raise UserError(f"--sizes: unknown size {name!r}; expected {', '.join(CPU_SIZES)} or name=HF_DIR")
        gate = gate_of(hf)
        if gated and not allow_failed_gate and (gate is None or not gate.get("passed")):
            why = "has no gate report beside it" if gate is None else "failed its gate"
            raise UserError(f"--sizes {item}: the base {hf} {why} (STUDY_DESIGN §6.4); build and gate it, or pass "
                            f"--allow-failed-gate")
        bases[name] = hf
    if not bases:
        raise UserError("--sizes: no size given")
    return bases


def _spec(args, bases: dict[str, Path]) -> ScalingSpec:
    from configs import get_recipe

    recipe = get_recipe(args.recipe)
    val, test = args.val_data, args.test_data
    if val is None or test is None:
        from configs.chain_cpu import chain_data

        splits = chain_data()
        val, test = val or splits["val"], test or splits["test"]
    try:
        mults = tuple(float(x) for x in args.lr_mults.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--lr-mults={args.lr_mults!r}: expected comma-separated numbers") from None
    spec = ScalingSpec(out=Path(args.out).resolve(), bases=bases,
                       presets=[p.strip() for p in args.presets.split(",") if p.strip()],
                       seeds=_ints(args.seeds, "--seeds"), lr=args.lr if args.lr is not None else recipe.policy.lr,
                       val_data=Path(val), test_data=Path(test), lr_mults=mults, lr_seed=args.lr_seed,
                       recipe=args.recipe, steps=args.steps, overrides=list(args.overrides),
                       eval_samples=args.eval_samples, eval_limit=args.eval_limit, parallel=args.parallel)
    try:
        spec.validate()
    except ValueError as e:
        raise UserError(str(e)) from None
    return spec


def variant_splits(args) -> dict[str, Path]:
    """{variant: its chain_train split}, made once; the variants are of the chain task's traces only."""
    from red_megatron.study.assets import ensure_chain_data
    from red_megatron.study.tasks.chain import ChainTaskConfig

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise UserError(f"--variants: unknown {bad or names}; expected some of {', '.join(VARIANTS)}")
    if args.val_data or args.test_data:
        raise UserError("--phase variants: the variants change the chain task's traces; they take the default "
                        "chain splits (no --val-data / --test-data)")
    return {v: ensure_chain_data(ChainTaskConfig(**VARIANTS[v]))["train"] for v in names}


def check_plan(spec: ScalingSpec, world: int) -> list[str]:
    """Validate every distinct run of the plan as ``red-train --check`` would (config.json, layout, world)."""
    from configs import get_recipe
    from red_megatron.cli.train import preflight
    from red_megatron.config import check_world
    from red_megatron.overrides import apply_overrides

    lines = []
    for size, hf_dir in spec.bases.items():
        runs = {(r["config"], r["lr"]) for r in plan_rows(spec) if r["size"] == size}
        hf, n_checked = None, 0
        for config, lr in sorted(runs, key=str):
            preset = "red" if config in ("red_wconst", "frozen_w") else config
            lrs = [spec.lr * m for m in spec.lr_mults] if lr == "chosen" else [lr]
            for x in lrs:
                ov = [f"model_dir={hf_dir}", f"algo.preset={preset}", f"policy.lr={x:g}", "use_preset_schedule=false",
                      *([f"steps={spec.steps}"] if spec.steps else []), *spec.overrides]
                try:
                    cfg = apply_overrides(get_recipe(spec.recipe), ov)
                    hf, _ = preflight(cfg, weights=False)
                    check_world(cfg, world)
                    n_checked += 1
                except (ValueError, OSError) as e:
                    raise UserError(f"size {size} ({hf_dir}), {config} at lr {x:g}: {e}") from None
        gate = gate_of(Path(hf_dir))
        gate_note = "no gate report" if gate is None else f"gate {'passed' if gate.get('passed') else 'FAILED'}"
        lines.append(f"size {size}: {n_checked} runs OK at world {world} ({hf.architecture}, {hf.num_layers} layers, "
                     f"hidden {hf.hidden_size}; {gate_note}) from {hf_dir}")
    return lines


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    real = args.check or args.dry_run or args.summary_only
    bases = resolve_bases(args.sizes, base_seed=args.base_seed, base_steps=args.base_steps,
                          allow_failed_gate=args.allow_failed_gate or real, gated=not real)
    spec = _spec(args, bases)
    if args.check:
        from red_megatron.cli.common import world_size

        for line in check_plan(spec, world_size(args.world_size)):
            print(line)
        print(f"check OK: {len(plan_rows(spec))} runs planned (lr grid x{', x'.join(f'{m:g}' for m in spec.lr_mults)} "
              f"of {spec.lr:g}, seeds {spec.seeds}) under {spec.out}")
        return 0
    if args.dry_run:
        for r in plan_rows(spec):
            lr = r["lr"] if isinstance(r["lr"], str) else f"{r['lr']:g}"
            print(f"{r['size']:>6} {r['phase']:<5} {r['config']:<16} lr {lr:<8} seeds {r['seeds']}")
        return 0
    if args.summary_only:
        from red_megatron.study.scaling import summary, write_summary

        s = summary(spec)
        write_summary(spec, s)
        print(json.dumps({size: {"lr_choice": v["lr_choice"], "lr_curve": v["lr_curve"]} for size, v in s["sizes"].items()},
                         indent=1))
        return 0
    if args.val_data is None or args.test_data is None:
        from red_megatron.study.assets import ensure_chain_data

        ensure_chain_data()  # the default val/test splits (made once; --check/--dry-run build nothing)
    failed: list[str] = []

    def runner(study, **kw):  # the cells run as always; the failed ones are named at the end and set the exit code
        from red_megatron.study.runner import run_study

        results = run_study(study, **kw)
        for r in results:
            for part in ("train", "eval"):
                if r[part] is not None and r[part].get("rc", 0) != 0:
                    failed.append(f"{Path(study.out).relative_to(spec.out)} {r['config']} seed {r['seed']} "
                                  f"{part}: {r[part].get('why', 'rc=' + str(r[part]['rc']))}")
        return results

    if args.phase == "variants":
        from red_megatron.study.scaling import run_variants

        run_variants(spec, variant_splits(args), runner=runner)
    else:
        s = run_scaling(spec, phase=args.phase, runner=runner)
        print(f"[scaling] summary: {spec.out / 'scaling.json'} ({len(s['sizes'])} sizes)")
    for line in failed:
        print(f"[scaling] FAILED {line}", file=sys.stderr)
    return 1 if failed else 0
