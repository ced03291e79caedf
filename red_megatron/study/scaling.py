"""The scaling study over model sizes, with the fair-lr protocol (issue 27, item 3).

Per size (its own base, which must pass the §6.4 gate; docs/STUDY.md) the study runs two phases:

1. **lr grid** (the fair protocol): every tuned preset trains at ``lr × m`` for each multiplier m of the
   grid (default ½×, 1×, 2× of today's study lr) with one seed (``lr_seed``), evaluated on
   ``chain_val``; its lr is the multiplier of the best held-out accuracy (within LR_TIE_POINTS of the best
   counts as a tie; ties go to the one nearest 1×, then the lower). The grid's cells are the lr-sensitivity curve of each preset (accuracy and the
   truncated-response rate, the collapse signature, against lr).
2. **main**: every preset runs its seeds at its own choice, evaluated on ``chain_test``. ``red_wconst``
   and ``frozen_w`` (red at lr 1e-12 for 30 steps, trained only: the frozen-policy w of the report's w distance) have
no lr of their own: they are red's controls and run beside red, at red's lr.

Layout under ``out``: ``<size>/lr/x<m>/`` and ``<size>/main/<preset>/`` are each a chain study of
red_megatron.study.runner (seed<S>/<config>/run, eval, markers written last), so every cell's result
is on disk as soon as it finishes and a rerun of the same command skips finished cells;
``<size>/lr_choice.json`` and ``scaling.json`` (every finished cell's numbers) are rewritten after each
phase. The same command takes real HF checkpoints as sizes (``--sizes 1.5b=/ckpt/Qwen2.5-1.5B``):
``--check`` validates every run of the plan against the checkpoint and the world size without
loading weights, ``--dry-run`` prints the plan.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from red_megatron.errors import UserError
from red_megatron.study.runner import CONTROLS, StudySpec, cell_dir, run_study

# size name -> the tiny_checkpoint shape of its chain base (parameters as counted by the shape's config)
CPU_SIZES = {"s": "chain_s", "m": "chain", "l": "chain_l"}
# the SFT steps of each size's default base where they differ from 450: l learns slower per step at the same lr
# and first passes §6.4's gate at 1450 steps (1400: easy 83.3 %; 1500: k=4 pass@1 85.8 %; 2026-12-06), beyond
# §6.4's ±50 % of 700 (1050 steps: easy 81.2 %): the gate is kept, the step window is not
SIZE_BASE_STEPS = {"l": 1450}
HEADLINE = ("red", "red_shift", "red_wconst", "sft_then_grpo", "grpo", "sft", "phi4_recipe", "guided_fading", "frozen_w")
LR_MULTS = (0.5, 1.0, 2.0)
# STUDY_DESIGN §6.8's premise-off variants that keep the base (their trace knobs draw from a separate per-row
# stream: same problems, same pretrain split); the latent-ability variant needs a base of its own and is not here
VARIANTS = {"clean": {"p_check": 0.0, "p_replay": 0.0}, "imperfect": {"p_wrong": 0.1}, "harsh": {"p_replay": 0.3}}
VARIANT_PRESETS = ("red", "sft_then_grpo", "sft", "grpo")  # the presets §6.8's expectations name


@dataclass
class ScalingSpec:
    out: Path
    bases: dict[str, Path]  # size -> the HF directory every run of that size starts from
    presets: list[str]
    seeds: list[int]
    lr: float  # the grid's 1× (today's study lr)
    val_data: Path  # where the lr is chosen
    test_data: Path  # what the main phase reports
    lr_mults: tuple[float, ...] = LR_MULTS
    lr_seed: int = 0
    recipe: str = "chain_cpu_study"
    steps: int | None = None
    overrides: list[str] = field(default_factory=list)
    eval_samples: int = 16
    eval_limit: int | None = None
    parallel: int = 2

    def validate(self) -> None:
        from red_megatron.algo.presets import PRESETS

        bad = [p for p in self.presets if p not in PRESETS and p not in CONTROLS]
        if bad:
            raise ValueError(f"--presets: unknown {bad}; valid: {', '.join([*PRESETS, *CONTROLS])}")
        for c in CONTROLS:
            if c in self.presets and "red" not in self.presets:
                raise ValueError(f"--presets: {c} needs red (it is red's control and runs beside it, at red's lr)")
        if not self.lr_mults or any(not m > 0 for m in self.lr_mults) or len(set(self.lr_mults)) != len(self.lr_mults):
            raise ValueError(f"--lr-mults: expected distinct numbers > 0, got {list(self.lr_mults)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not self.seeds or any(s < 0 for s in self.seeds) or self.lr_seed < 0:
            raise ValueError(f"--seeds / --lr-seed: expected integers >= 0, got {self.seeds}, {self.lr_seed}")
        if not self.bases:
            raise ValueError("--sizes: no size given")

    @property
    def tuned(self) -> list[str]:
        """The presets that choose their own lr (red_wconst follows red)."""
        return [p for p in self.presets if p not in CONTROLS]


def _study(spec: ScalingSpec, size: str, out: Path, configs: list[str], seeds: list[int], lr: float,
           eval_data: Path, include_base: bool, extra: tuple[str, ...] = ()) -> StudySpec:
    return StudySpec(out=out, base=Path(spec.bases[size]), configs=configs, seeds=seeds, recipe=spec.recipe,
                     steps=spec.steps, overrides=[*spec.overrides, f"policy.lr={lr:g}", *extra],
                     eval_samples=spec.eval_samples, eval_data=str(eval_data),
                     eval_per_source_limit=spec.eval_limit, parallel=spec.parallel, include_base=include_base)


def lr_phase(spec: ScalingSpec, size: str) -> list[tuple[float, StudySpec]]:
    """One chain study per multiplier; the base is evaluated on chain_val once (with the first)."""
    return [(m, _study(spec, size, Path(spec.out) / size / "lr" / f"x{m:g}", spec.tuned, [spec.lr_seed],
                       spec.lr * m, spec.val_data, include_base=i == 0)) for i, m in enumerate(spec.lr_mults)]


def main_phase(spec: ScalingSpec, size: str, choice: dict[str, float]) -> list[tuple[str, StudySpec]]:
    """One chain study per preset at its lr; the base is evaluated on chain_test once (with the first)."""
    out = []
    for i, p in enumerate(spec.tuned):
        configs = [p] + ([c for c in CONTROLS if c in spec.presets] if p == "red" else [])
        out.append((p, _study(spec, size, Path(spec.out) / size / "main" / p, configs, spec.seeds,
                              spec.lr * choice[p], spec.test_data, include_base=i == 0)))
    return out


def variant_phase(spec: ScalingSpec, size: str, choice: dict[str, float], variant: str,
                  train_path: Path) -> list[tuple[str, StudySpec]]:
    """One seed (``lr_seed``) of each variant preset at its chosen lr, trained on the variant's traces and
    evaluated on the main phase's test split: ``<size>/variant_<name>/<preset>/``."""
    presets = [p for p in VARIANT_PRESETS if p in spec.tuned]
    out = []
    for p in presets:
        out.append((p, _study(spec, size, Path(spec.out) / size / f"variant_{variant}" / p, [p], [spec.lr_seed],
                              spec.lr * choice[p], spec.test_data, include_base=False,
                              extra=(f"data.path={train_path}",))))
    return out


def run_variants(spec: ScalingSpec, variants: dict[str, Path], *, log=print,
                 runner: Callable[..., list] = run_study) -> None:
    """The premise-off variants (``{name: its train split}``) at every size whose lr grid is finished."""
    for size in spec.bases:
        choice = summary(spec)["sizes"][size]["lr_choice"]
        missing = [p for p in VARIANT_PRESETS if p in spec.tuned and choice.get(p) is None]
        if missing:
            raise ValueError(f"size {size}: the lr grid is not finished for {missing}; run --phase lr first")
        for name, train in variants.items():
            for p, s in variant_phase(spec, size, choice, name, train):
                log(f"[scaling] size {size}: variant {name} ({VARIANTS[name]}), {p} at lr {spec.lr * choice[p]:g}")
                runner(s, log=log)


def gate_of(hf: Path) -> dict | None:
    """The §6.4 gate report of a base (gate.json beside its hf/ directory, or inside it), None without one."""
    for p in (Path(hf).parent / "gate.json", Path(hf) / "gate.json"):
        if p.is_file():
            return json.loads(p.read_text())
    return None


def cell_result(out: Path, config: str, seed: int) -> dict | None:
    """Held-out accuracy and truncated rate (%) of a finished cell's eval; None until its eval marker exists."""
    d = cell_dir(out, config, seed)
    if not (d / "eval.done.json").exists():
        return None
    rows = [json.loads(x) for x in (d / "eval" / "samples.jsonl").read_text().splitlines() if x.strip()]
    if not rows:
        return None
    n = len(rows)
    return {"acc": 100.0 * sum(float(r["reward"]) for r in rows) / n,
            "trunc": 100.0 * sum(bool(r.get("truncated")) for r in rows) / n, "samples": n}


def lr_table(spec: ScalingSpec, size: str) -> dict[str, dict[str, dict | None]]:
    """{preset: {"x<m>": result or None}}: the lr-sensitivity curve of each tuned preset at ``size``."""
    return {p: {f"x{m:g}": cell_result(s.out, p, spec.lr_seed) for m, s in lr_phase(spec, size)} for p in spec.tuned}


LR_TIE_POINTS = 1.0  # accuracies this close to the best count as ties: one seed's noise picks no lr


def choose_lr(curve: dict[str, dict | None], tie_points: float = LR_TIE_POINTS) -> float | None:
    """The multiplier of the best accuracy, where every multiplier within ``tie_points`` of the best ties and
    a tie goes to the one nearest 1×, then the lower; None until every cell is done."""
    if not curve or any(v is None for v in curve.values()):
        return None
    mults = [(float(k[1:]), v["acc"]) for k, v in curve.items()]
    best = max(a for _, a in mults)
    return min((m for m, a in mults if a >= best - tie_points), key=lambda m: (abs(m - 1.0), m))


def check_cells_base(spec: ScalingSpec, size: str) -> None:
    """Refuse to summarise a size's cells under another base than the one they were run from (a summary with
    the default base of a size whose cells ran from a --base-steps one labelled them with the wrong base)."""
    want = str(spec.bases[size])
    for f in sorted((Path(spec.out) / size).glob("*/*/study_spec.json")):
        got = json.loads(f.read_text()).get("base")
        if got != want:
            raise UserError(f"--sizes {size}: its cells in {f.parent} were run from the base {got}, not {want}; "
                            f"give the size (or --base-steps) they were run with")


def summary(spec: ScalingSpec) -> dict:
    """Every finished cell of every size: the lr curves, the choices, the main cells."""
    sizes = {}
    for size in spec.bases:
        check_cells_base(spec, size)
        table = lr_table(spec, size)
        choice = {p: choose_lr(c) for p, c in table.items()}
        main = {}
        if all(v is not None for v in choice.values()):
            for p, s in main_phase(spec, size, choice):
                for c in (["base"] if s.include_base else []) + s.configs:
                    main[c] = {str(seed): cell_result(s.out, c, seed) for seed in spec.seeds}
        sizes[size] = {"base": str(spec.bases[size]), "lr_curve": table, "lr_choice": choice,
                       "lr": {p: (None if m is None else spec.lr * m) for p, m in choice.items()}, "main": main}
    return {"lr_1x": spec.lr, "lr_mults": list(spec.lr_mults), "presets": spec.presets, "seeds": spec.seeds,
            "lr_seed": spec.lr_seed, "steps": spec.steps, "sizes": sizes}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two commands on disjoint presets may share a size
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(out: Path):
    """One writer at a time of the study's shared files (commands on other sizes or presets run beside)."""
    import fcntl

    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / ".scaling.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def merge_summary(old: dict, new: dict) -> dict:
    """``new`` over ``old``: a command on some sizes or presets keeps what the others wrote (per size, the lr
    curves, choices and main cells of presets it did not run); the study-wide settings are the newest."""
    sizes = dict(old.get("sizes", {}))
    for size, cur in new["sizes"].items():
        was = sizes.get(size, {})
        sizes[size] = {**was, **cur, **{k: {**was.get(k, {}), **cur[k]} for k in ("lr_curve", "lr_choice", "lr", "main")
                                        if isinstance(cur.get(k), dict)}}
    presets = list(dict.fromkeys([*old.get("presets", []), *new["presets"]]))
    return {**new, "presets": presets, "sizes": sizes}


def write_summary(spec: ScalingSpec, s: dict) -> None:
    path = Path(spec.out) / "scaling.json"
    with _locked(spec.out):
        old = json.loads(path.read_text()) if path.exists() else {}
        _write_json(path, merge_summary(old, s) if old.get("lr_1x") == s["lr_1x"] else s)


def run_scaling(spec: ScalingSpec, *, phase: str = "all", log=print,
                runner: Callable[..., list] = run_study) -> dict:
    """Run the missing cells, size by size (lr grid, then main); returns :func:`summary`. ``phase``: 'lr'
    stops after the grids, 'main' needs the grids finished."""
    spec.validate()
    if phase not in ("all", "lr", "main"):
        raise ValueError(f"--phase must be all, lr or main, got {phase!r}")

    def save() -> dict:
        s = summary(spec)
        write_summary(spec, s)
        return s

    for size in spec.bases:
        if phase in ("all", "lr"):
            for m, s in lr_phase(spec, size):
                log(f"[scaling] size {size}: lr grid x{m:g} (lr {spec.lr * m:g}) on {Path(spec.val_data).name}")
                runner(s, on_progress=save, log=log)
        choice = summary(spec)["sizes"][size]["lr_choice"]
        if any(v is None for v in choice.values()):
            missing = [p for p, v in choice.items() if v is None]
            if phase == "main":
                raise ValueError(f"size {size}: the lr grid is not finished for {missing}; run --phase lr first")
            log(f"[scaling] size {size}: lr grid unfinished for {missing} (failed cells?): no main phase")
            continue
        path = Path(spec.out) / size / "lr_choice.json"  # merged: commands on preset subsets add their choices
        with _locked(spec.out):
            known = json.loads(path.read_text()) if path.exists() else {}
            _write_json(path, {**known, **{p: spec.lr * m for p, m in choice.items()}})
        if phase == "lr":
            continue
        for p, s in main_phase(spec, size, choice):
            log(f"[scaling] size {size}: {p} at lr {spec.lr * choice[p]:g} (x{choice[p]:g}), seeds {spec.seeds}")
            runner(s, on_progress=save, log=log)
        save()
    return save()


def plan_rows(spec: ScalingSpec) -> list[dict]:
    """Every run of the study as (size, phase, config, lr multiplier or 'chosen', seeds), for --dry-run."""
    rows = []
    for size in spec.bases:
        for m, _ in lr_phase(spec, size):
            rows += [{"size": size, "phase": "lr", "config": p, "lr": spec.lr * m, "seeds": [spec.lr_seed]}
                     for p in spec.tuned]
        rows += [{"size": size, "phase": "main", "config": c, "lr": "chosen", "seeds": spec.seeds}
                 for c in spec.presets]
    return rows
