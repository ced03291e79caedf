"""The README's main job: a small RED run on the embedded default, end to end.

1-2. the recipe's assets, made once (configs/tiny_cpu.py): a tiny random-weight Qwen2 with a
   locally trained tokenizer, and the synthetic task's train and held-out splits (LUFFY schema),
3. RED with real Megatron-Core (policy) and vLLM (rollouts), the `tiny_cpu` recipe,
4. plots of the run (entropy dynamics as the paper's Figure 6, reward, response length),
5. the evaluation protocol on the held-out split, before and after, as a Table-2-shaped table.
Runs on the CPU where there is no GPU (a few minutes on 2 cores); uses the GPU when present.

  python scripts/demo.py [--out runs/demo] [--steps N] [section.field=value ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _say(msg: str, t0: float) -> None:
    print(f"[demo {time.time() - t0:6.1f}s] {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="the demo's folder (run, plots, evaluation)")
    ap.add_argument("--steps", type=int, default=None, help="RED steps (default: the recipe's)")
    ap.add_argument("--resume", action="store_true", help="continue the last demo run instead of starting over")
    ap.add_argument("overrides", nargs="*", help="section.field=value overrides of the tiny_cpu recipe")
    args = ap.parse_args(argv)
    # A demo prints its own story; library chatter (vLLM's INFO lines, deprecation notes) stays out.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    t0 = time.time()
    out = Path(args.out)

    import torch

    from configs import get_recipe
    from red_megatron.overrides import apply_overrides
    from red_megatron.plots import plot_run
    from red_megatron.trainer import train

    run_dir = out / "run"
    if not args.resume and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    overrides = [f"run_dir={run_dir}"] + ([f"steps={args.steps}"] if args.steps else [])
    cfg = apply_overrides(get_recipe("tiny_cpu"), overrides + list(args.overrides))  # makes the assets once
    ckpt, eval_data = Path(cfg.model_dir), cfg.eval.data_path
    device = "GPU (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "CPU"
    _say(f"RED: preset={cfg.algo.preset}, {cfg.steps} steps x {cfg.data.global_batch_size} prompts x "
         f"({cfg.algo.num_online} online + 1 offline) on the {device}; run dir {run_dir}", t0)
    final = train(cfg)
    _say("training done; final step: " + ", ".join(
        f"{k}={final[k]:.3f}" for k in ("reward/online_accuracy", "reward/offline_accuracy", "entropy/h_rl",
                                        "entropy/h_sft", "red/w", "optim/loss", "rollout/logp_gap_max")
        if isinstance(final.get(k), float)), t0)
    for p in plot_run(run_dir):
        _say(f"plot {p}", t0)

    from scripts.eval import main as eval_main

    common = ["--data", str(eval_data), "--max-tokens", str(cfg.eval.protocol.max_tokens), "--dtype",
              cfg.rollout.dtype, "--reward-workers", "1", "--max-prompt-tokens", str(cfg.data.max_prompt_tokens)]
    eval_main(["--model", str(ckpt), "--name", "initial checkpoint", "--out", str(out / "eval" / "initial")] + common)
    eval_main(["--model", str(run_dir / "hf"), "--name", f"after {cfg.steps} steps of {cfg.algo.preset}",
               "--out", str(out / "eval" / "final"), "--include", str(out / "eval" / "initial" / "results.json")]
              + common)
    _say(f"done: metrics {run_dir / 'metrics.jsonl'}, plots {run_dir / 'plots'}, "
         f"evaluation {out / 'eval' / 'final' / 'table.md'}", t0)
    return 0


if __name__ == "__main__":  # the reward pool and checkpoint writers start processes
    sys.exit(main())
