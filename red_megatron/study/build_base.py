"""Build the chain study's base once (STUDY_DESIGN §6.4) and check its gate before any study uses it.

  nice -n 10 python scripts/build_chain_base.py                    # base_seed 0, 700 SFT steps (~5-10 min)
  python scripts/build_chain_base.py --base-seed 1                 # the second base of §6.5
  python scripts/build_chain_base.py --steps 2 --gate-per-k 2 --gate-samples 2    # a smoke build

1. the random-init checkpoint of the chain shape and the chain splits (configs/chain_cpu.py, cached);
2. the project's own SFT path: scripts/train.py --recipe chain_cpu_base (algo.preset=sft,
   use_preset_schedule=false) on chain_pretrain, in its own process (one thread), resumable;
3. the gate on chain_val (red_megatron/study/chain_base.py): gate.json and gate.md beside the base.
Everything lands in $RED_ASSETS/chain_base_<key>/ (hf/, run/, inputs.json, gate.json, gate.md); a
finished base (gate.json present) is reused, --regate re-checks it. --report also writes the gate
report there (e.g. benchmarks/reports/chain_base_<date>.md). Exit 0 when the gate passed, 3 when it
failed (the base is kept: §6.4 says to change only the base's steps or k=4/5 mass), 1 on errors.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # a clone: the cells run its scripts/train.py and scripts/eval.py


def build_parser() -> argparse.ArgumentParser:
    from configs.chain_cpu import BASE_STEPS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-seed", type=int, default=0, help="init and data-order seed of the base")
    ap.add_argument("--steps", type=int, default=BASE_STEPS, help="SFT steps (STUDY_DESIGN: 700 × 32 rows)")
    ap.add_argument("--gate-samples", type=int, default=32, help="T=1 samples per val problem (the gate needs 32)")
    ap.add_argument("--gate-per-k", type=int, default=None, help="only the first N val problems of each k (smoke)")
    ap.add_argument("--pretrain-k-probs", default=None,
                    help='the base\'s pretrain mix as JSON {k: p} (§6.4 allows changing the k=4/5 mass); '
                         'default: configs/chain_cpu.py BASE_K_PROBS')
    ap.add_argument("--shape", default="chain", help="the model size: chain (1.77M), chain_s (0.48M), chain_l (6.97M)")
    ap.add_argument("--regate", action="store_true", help="re-check the gate of an already built base")
    ap.add_argument("--report", default=None, help="also write the gate report here (markdown)")
    ap.add_argument("overrides", nargs="*", help="extra section.field=value for the SFT run (part of the cache key)")
    return ap


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def train_base(d: Path, base_seed: int, steps: int, overrides: list[str], task, shape: str = "chain") -> dict:
    """SFT on chain_pretrain through scripts/train.py; the exported policy is moved to d/hf."""
    from red_megatron.study.assets import ensure_chain_data, ensure_chain_init

    run = d / "run"
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--recipe", "chain_cpu_base", "--run-dir", str(run),
           f"model_dir={ensure_chain_init(base_seed, shape=shape)}", f"data.path={ensure_chain_data(task)['pretrain']}", f"seed={base_seed}",
           f"data.seed={base_seed}", f"steps={steps}", f"policy.lr_decay_steps={steps}", *overrides]
    t0 = time.time()
    with open(run / "train.log", "a") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    if rc != 0 or not (run / "hf" / "config.json").exists():
        raise RuntimeError(f"training the chain base failed (rc={rc}); see {run / 'train.log'}")
    shutil.rmtree(d / "hf", ignore_errors=True)
    os.rename(run / "hf", d / "hf")
    from red_megatron.metrics import read_metrics

    recs = read_metrics(run)
    last = [r["optim/loss"] for r in recs[-20:] if isinstance(r.get("optim/loss"), (int, float))]
    return {"train_seconds": round(seconds, 1), "steps_logged": len(recs),
            "loss_first": recs[0].get("optim/loss") if recs else None,
            "loss_last20": sum(last) / len(last) if last else None,
            "h_sft_last": recs[-1].get("entropy/h_sft") if recs else None}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from configs.chain_cpu import base_dir, base_inputs, base_task
    from red_megatron.study.assets import ensure_chain_data
    from red_megatron.study.chain_base import render_gate_md, run_gate, write_gate

    if args.steps < 1 or args.gate_samples < 1 or (args.gate_per_k is not None and args.gate_per_k < 1):
        print("--steps, --gate-samples and --gate-per-k must be >= 1", file=sys.stderr)
        return 1
    try:
        probs = None if args.pretrain_k_probs is None else json.loads(args.pretrain_k_probs)
        task = base_task(probs)
    except ValueError as e:
        print(f"--pretrain-k-probs: {e}", file=sys.stderr)
        return 1
    from red_megatron.study.tiny_checkpoint import SHAPES

    if args.shape not in SHAPES or not args.shape.startswith("chain"):
        print(f"--shape {args.shape!r}: expected one of {', '.join(s for s in SHAPES if s.startswith('chain'))}",
              file=sys.stderr)
        return 1
    d = base_dir(args.base_seed, args.steps, task, overrides=args.overrides, shape=args.shape)
    d.mkdir(parents=True, exist_ok=True)
    (d / "inputs.json").write_text(json.dumps(base_inputs(args.base_seed, args.steps, task, args.overrides, args.shape),
                                              indent=1, default=str) + "\n")
    t0 = time.time()
    if (d / "gate.json").exists() and not args.regate:
        rep = json.loads((d / "gate.json").read_text())
        print(f"[chain_base] reusing {d} (gate {'passed' if rep['passed'] else 'FAILED'})")
    else:
        train = json.loads((d / "train.json").read_text()) if (d / "hf" / "config.json").exists() and \
            (d / "train.json").exists() else None
        if train is None:
            print(f"[chain_base] SFT {args.steps} steps (base_seed {args.base_seed}) -> {d}", flush=True)
            train = train_base(d, args.base_seed, args.steps, args.overrides, task, args.shape)
            (d / "train.json").write_text(json.dumps(train, indent=1) + "\n")
        print(f"[chain_base] gate on chain_val ({args.gate_samples} samples at T=1)", flush=True)
        meta = {"date": datetime.date.today().isoformat(), "device": f"CPU ({os.cpu_count()} cores, "
                f"{platform.machine()}), one thread a process", "base": str(d / "hf"), "base_seed": args.base_seed,
                "sft_steps": args.steps, "shape": args.shape,
                "pretrain_k_probs": task.pretrain_k_probs, **train}
        rep = run_gate(d / "hf", ensure_chain_data()["val"], samples=args.gate_samples, per_k_limit=args.gate_per_k,
                       seed=args.base_seed, meta=meta)
        write_gate(rep, d)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(render_gate_md(rep))
    print((d / "gate.md").read_text())
    print(f"[chain_base] {d} ({time.time() - t0:.0f} s)")
    return 0 if rep["passed"] else 3


if __name__ == "__main__":
    sys.exit(main())
