"""The README's main job: a small RED run on the embedded default, end to end.

1-2. the recipe's assets, made once (configs/tiny_cpu.py): a tiny random-weight Qwen2 with a
   locally trained tokenizer, and the synthetic task's train and held-out splits (LUFFY schema),
3. a short SFT warm-up on the traces (the stand-in for a pretrained base: a weak model that sometimes
   answers right, made once and cached under runs/assets), then RED from it with real Megatron-Core
   (policy) and vLLM (rollouts), the `tiny_cpu_study` recipe (lr 1e-3),
4. plots of the run (entropy dynamics as the paper's Figure 6, reward, response length),
5. the evaluation protocol on the held-out split for the random init, the base and the RED policy,
   as a Table-2-shaped table with the chance line.
Runs on the CPU where there is no GPU (about two minutes on 2 cores); uses the GPU when present.
Library output (vLLM, megatron) goes to <out>/run/logs/library.log; the console shows the demo's lines.

  python scripts/demo.py [--out runs/demo] [--steps N] [--base-steps N] [section.field=value ...]
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _say(msg: str, t0: float) -> None:
    print(f"[demo {time.time() - t0:6.1f}s] {msg}", flush=True)


def _main(argv: list[str]) -> int:
    from red_megatron.cli.common import parser
    from red_megatron.errors import UserError

    ap = parser("demo.py", __doc__)  # a bad flag is a refusal: one line, exit 2
    ap.add_argument("--out", default="runs/demo", help="the demo's folder (run, plots, evaluation)")
    ap.add_argument("--steps", type=int, default=None, help="RED steps (default: the recipe's)")
    ap.add_argument("--base-steps", type=int, default=30, help="SFT warm-up steps of the base (0: RED from random init)")
    ap.add_argument("--resume", action="store_true", help="continue the last demo run instead of starting over")
    ap.add_argument("overrides", nargs="*", help="section.field=value overrides of the tiny_cpu recipe")
    args = ap.parse_args(argv)
    for flag, value, least in (("--steps", args.steps, 1), ("--base-steps", args.base_steps, 0)):
        if value is not None and value < least:
            raise UserError(f"bad {flag}={value} in demo.py: expected an int >= {least}")
    # A demo prints its own story; library chatter (vLLM's INFO lines, deprecation notes) stays out.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    t0 = time.time()
    out = Path(args.out)

    run_dir = out / "run"
    if not args.resume and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    from red_megatron.console import library_output_to_log
    from red_megatron.metrics import setup_run_logging

    lib_log = setup_run_logging(run_dir)  # library lines and warnings to run_dir/logs/library.log
    with library_output_to_log(lib_log):  # and what the libraries write to fd 2 (C++ warnings, tqdm bars)
        return _run(args, out, run_dir, t0)


def _run(args, out: Path, run_dir: Path, t0: float) -> int:
    import torch

    from configs import get_recipe
    from red_megatron.errors import UserError
    from red_megatron.overrides import apply_overrides
    from red_megatron.plots import plot_run
    from red_megatron.trainer import train

    overrides = [f"run_dir={run_dir}"] + ([f"steps={args.steps}"] if args.steps is not None else [])
    cfg = apply_overrides(get_recipe("tiny_cpu_study"), overrides + list(args.overrides))  # makes the assets once
    init_ckpt, eval_data = Path(cfg.model_dir), cfg.eval.data_path
    ckpt = init_ckpt
    if args.base_steps > 0:
        ckpt = _sft_base(cfg, args.base_steps, t0)
        cfg = apply_overrides(cfg, [f"model_dir={ckpt}"])
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

    from red_megatron.cli.eval import main as eval_main

    common = ["--data", str(eval_data), "--max-tokens", str(cfg.eval.protocol.max_tokens), "--dtype",
              cfg.rollout.dtype, "--reward-workers", "1", "--max-prompt-tokens", str(cfg.data.max_prompt_tokens)]
    rows = [(init_ckpt, "random init", "init")]
    if ckpt != init_ckpt:
        rows.append((ckpt, f"SFT warm-up base ({args.base_steps} steps)", "base"))
    rows.append((run_dir / "hf", f"after {cfg.steps} steps of {cfg.algo.preset} from it" if ckpt != init_ckpt
                 else f"after {cfg.steps} steps of {cfg.algo.preset}", "final"))
    done = []
    lib_log = open(run_dir / "logs" / "library.log", "a")  # noqa: SIM115 - closed below
    # each eval prints its table (the last one holds every row); vLLM's progress bars go to the log
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(lib_log):
        for model, name, key in rows:
            rc = eval_main(["--model", str(model), "--name", name, "--out", str(out / "eval" / key), "--include",
                            *done] + common)
            if rc:  # its one line went to the log with the rest of its stderr
                raise UserError(f"the evaluation of {model} failed (exit {rc}) in {out / 'eval' / key}: "
                                f"expected exit 0; its 'error:' line is in {run_dir / 'logs' / 'library.log'}")
            done.append(str(out / "eval" / key / "results.json"))
    lib_log.close()
    table = out / "eval" / "final" / "table.md"
    lines = table.read_text().splitlines()
    last_row = max(i for i, line in enumerate(lines) if line.startswith("|") and all(
        x.startswith("|") for x in lines[:i + 1] if x.strip()))
    lines.insert(last_row + 1, "| chance (a random digit: the gold is one of 10) | 10.00 | 10.00 | – |")
    table.write_text("\n".join(lines) + "\n")
    print(table.read_text(), flush=True)
    _say(f"done: metrics {run_dir / 'metrics.jsonl'}, plots {run_dir / 'plots'}, "
         f"evaluation {out / 'eval' / 'final' / 'table.md'}", t0)
    return 0


def _sft_base(cfg, steps: int, t0: float) -> Path:
    """The SFT warm-up base (``steps`` SFT steps on the traces from the random init), made once and cached
    beside the tiny assets, keyed by its steps and lr; a subprocess, so its megatron state dies with it."""
    import subprocess

    from configs.tiny_cpu import assets_root

    base = assets_root() / f"tiny_sft_base_{steps}_lr{cfg.policy.lr:g}"
    hf = base / "run" / "hf"
    if (hf / "config.json").exists():
        _say(f"SFT warm-up base: cached at {hf}", t0)
        return hf
    _say(f"SFT warm-up base: {steps} SFT steps on the traces from the random init -> {hf}", t0)
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "train.py"), "--recipe", "tiny_cpu_study",
           "--run-dir", str(base / "run"), "algo.preset=sft", "use_preset_schedule=false", f"steps={steps}",
           "metrics.progress=false"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode == 2 and out.stderr.startswith("error: "):  # its refusal: the demo's own one line
        from red_megatron.errors import UserError

        raise UserError(f"{out.stderr.strip()[len('error: '):]} (the SFT warm-up of the base, {base / 'run'})")
    if out.returncode != 0:
        raise RuntimeError(f"the SFT warm-up failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    return hf


def main(argv=None) -> int:
    from red_megatron.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":  # the reward pool and checkpoint writers start processes
    sys.exit(main())
