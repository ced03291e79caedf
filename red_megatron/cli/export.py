"""red-export: any checkpoint step of a run dir -> a Hugging Face directory (config, safetensors, tokenizer).

  red-export runs/red                        # the newest checkpoint -> runs/red/hf_step_<N>
  red-export runs/red --step 40 --out /tmp/red_step40
  red-export runs/red --list                 # the steps there
  red-export runs/red/stage1_grpo model_dir=/ckpt/Qwen2.5-Math-1.5B   # a staged preset's stage; a moved base

The run dir's ``run_config.json`` (written by red-train) says which model the checkpoint is of
(``model_dir``: its config.json and tokenizer) and the policy's dtype; ``section.field=value``
overrides change it (e.g. ``model_dir=`` where the base checkpoint has moved). The weights are
read from ``checkpoints/step_<N>`` (megatron's distributed checkpoint, saved at any TP/PP: it
reshards on load), in one process by default (``policy.tp=1 policy.pp=1``) or under torchrun with
the TP/PP given as overrides; no optimizer state is read.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from red_megatron.cli.common import add_overrides, parser, world_size
from red_megatron.errors import CheckpointError, UserError, run_cli


def build_parser():
    ap = parser("red-export", __doc__)
    ap.add_argument("run_dir", help="a run directory written by red-train (holds run_config.json and checkpoints/)")
    ap.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the newest complete one)")
    ap.add_argument("--out", default=None, help="the HF directory to write (default: <run_dir>/hf_step_<N>)")
    ap.add_argument("--list", action="store_true", help="list the run dir's checkpoint steps and exit")
    ap.add_argument("--verbose", action="store_true",
                    help="show the libraries' log lines and warnings here (default: <run_dir>/logs/library.log)")
    add_overrides(ap, "the run's saved config (run_config.json)")
    return ap


def load_run_config(run_dir: Path, overrides: list[str]):
    """The RunConfig a run dir was made with, plus ``overrides`` (validated once)."""
    from red_megatron.config import RunConfig
    from red_megatron.overrides import apply_overrides, config_from_dict

    path = run_dir / "run_config.json"
    if not run_dir.is_dir():
        raise UserError(f"no run directory in {run_dir}: expected a directory written by red-train")
    if not path.is_file():
        stages = sorted(p.name for p in run_dir.glob("stage*_*") if (p / "run_config.json").is_file())
        hint = f"; this run has stages, export one of them: {stages}" if stages else ""
        raise UserError(f"missing run_config.json in {run_dir}: expected a run directory written by red-train{hint}")
    from red_megatron.cli.checks import read_json_file

    data = read_json_file(path, "run config")
    if not isinstance(data.get("config"), dict):
        raise UserError(f"unreadable run config in {path}: expected a 'config' object")
    return apply_overrides(config_from_dict(RunConfig, data["config"]), overrides)


def checkpoint_steps(root: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in root.glob("step_*") if (p / "meta.json").is_file())


def pick_checkpoint(run_dir: Path, step: int | None) -> Path:
    from red_megatron.policy.checkpoint import resolve_checkpoint

    root = run_dir / "checkpoints"
    steps = checkpoint_steps(root)
    if step is None:
        ckpt = resolve_checkpoint(root) if root.is_dir() else None
        if ckpt is None:
            raise CheckpointError(f"no checkpoint in {root}: expected step_<N> directories written by red-train "
                                  f"(checkpoint_every > 0 keeps intermediate steps)")
        return ckpt
    ckpt = root / f"step_{step:08d}"
    if not (ckpt / "meta.json").is_file():
        raise CheckpointError(f"no checkpoint of step {step} in {root}: expected one of the saved steps {steps}")
    return ckpt


def _main(argv: list[str]) -> int:
    import dataclasses

    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    cfg = load_run_config(run_dir, [])
    if args.list:
        steps = checkpoint_steps(run_dir / "checkpoints")
        print(f"{run_dir}: checkpoint steps {steps} (model {cfg.model_dir})")
        return 0
    layout = [o for o in args.overrides if o.split("=", 1)[0].strip() in ("policy.tp", "policy.pp")]
    world = world_size(None)
    defaults = [] if layout else ["policy.tp=1", "policy.pp=1"]
    from red_megatron.overrides import apply_overrides

    cfg = apply_overrides(cfg, defaults + list(args.overrides))
    if cfg.policy.tp * cfg.policy.pp != world:
        raise UserError(f"bad layout in policy.tp={cfg.policy.tp} x policy.pp={cfg.policy.pp}: expected the product "
                        f"to equal the world size {world} (export runs one model replica)")
    ckpt = pick_checkpoint(run_dir, args.step)
    meta = json.loads((ckpt / "meta.json").read_text())
    step = int(meta.get("step", -1))
    out = Path(args.out) if args.out else run_dir / f"hf_step_{step}"
    from red_megatron.cli.checks import check_model_dir

    check_model_dir(cfg.model_dir, need_chat_template=False)
    from red_megatron.metrics import setup_run_logging

    lib_log = setup_run_logging(run_dir, verbose=args.verbose, rank=int(os.environ.get("RANK", "0")))  # before megatron
    from red_megatron.console import library_output_to_log

    with library_output_to_log(lib_log, enabled=not args.verbose):  # megatron's C++/tqdm output too
        from red_megatron.policy import MegatronPolicy

        policy_cfg = dataclasses.replace(cfg.policy, use_distributed_optimizer=False)
        policy = MegatronPolicy.from_hf(cfg.model_dir, policy_cfg, seed=cfg.seed)
        policy.load_checkpoint(ckpt, load_optimizer=False, load_rng=False)
        policy.export_hf(out, tokenizer_dir=cfg.model_dir)
    from red_megatron.errors import is_rank0

    if is_rank0():
        print(f"[export] {ckpt} (step {step}, saved at {meta.get('layout')}) -> {out}")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # dist checkpointing's helpers start with spawn: keep the guard
    sys.exit(main())
