"""red-train: one RED (or any preset's) run from a recipe and section.field=value overrides.

  red-train --recipe tiny_cpu steps=2                          # one process (the CPU demo's recipe)
  red-train --nproc-per-node 8 --recipe qwen25_math_1p5b model_dir=... data.path=...   # 8 processes (torchrun)
  red-train --recipe qwen25_7b model_dir=/ckpt/Qwen2.5-7B --world-size 16 --check   # validate only
  red-train --config my_run.yaml policy.lr=1e-5          # a config file (YAML/JSON), then overrides
  red-train --config runs/x/run_config.json              # replay a run exactly as it was resolved

A torchrun target (reads RANK / WORLD_SIZE / LOCAL_RANK); alone it runs as a one-process world.
The recipe (configs/, or FILE.py[:function]) gives the whole config; a --config file's fields and then
the command line's overrides are applied on it, then the config is validated once (order never matters). Before megatron or vLLM start, the model dir (config.json,
tokenizer, safetensors headers), the chat template, the reward's verify_fn and the layout against
the world size are checked. ``--check`` stops there: it reads config.json (no weights), prints a
summary of the resolved layout and exits 0. A refusal is one line on stderr and exit code 2.

SIGINT (Ctrl-C), SIGTERM and SIGUSR1 stop the run after the current step: it saves a checkpoint, prints
one line and exits with code 3; the same command resumes it (docs/RUNS.md). Under plain torchrun the
ranks do the same, and torchrun then adds its own traceback and exits 1: ``red-train --nproc-per-node N``
(torchrun through red_megatron.launch.torchrun) ends with the one line and exit 3.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from red_megatron.cli.common import add_overrides, add_recipe_args, parser, resolve_run_config, world_size
from red_megatron.errors import UserError, run_cli


class _HelpConfig(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from red_megatron.cli.config_doc import config_reference

        print(config_reference(), end="")
        parser.exit(0)


def build_parser():
    ap = parser("red-train", __doc__)
    add_recipe_args(ap)
    ap.add_argument("--run-dir", default=None, help="where metrics, checkpoints and plots go (overrides run_dir)")
    ap.add_argument("--check", action="store_true",
                    help="resolve and validate the config against the model's config.json and the world size, "
                         "print the layout, exit (no weights, no engines)")
    ap.add_argument("--world-size", type=int, default=None,
                    help="the world size to validate for (default: $WORLD_SIZE, else 1)")
    ap.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                    help="run N processes on this machine under torchrun (red_megatron.launch.torchrun), after "
                         "these checks: a stop signal ends in the run's one line and exit 3, no torchrun traceback")
    ap.add_argument("--help-config", action=_HelpConfig,
                    help="print the configuration reference (every section.field, its type, default and meaning, "
                         "as Markdown: docs/CONFIG.md) and exit")
    ap.add_argument("--verbose", action="store_true",
                    help="show every library's log lines (megatron, vLLM, Python warnings) on the console at DEBUG; "
                         "by default they go to <run_dir>/logs/library.log and the console shows the project's own")
    add_overrides(ap)
    return ap


def parse_config(argv=None):
    """The resolved RunConfig of a command line (recipe + overrides, validated once)."""
    args = build_parser().parse_args(argv)
    return _resolve(args)


def _resolve(args):
    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    return resolve_run_config(args.recipe, args.config, overrides)


def preflight(cfg, *, weights: bool = True) -> tuple[object, list[str]]:
    """Every start-time check of the files a run names; returns (HFModelConfig, notes for --check)."""
    from red_megatron.algo.presets import preset_stages
    from red_megatron.cli.checks import check_chat_template, check_model_dir, check_verify_fn

    notes = []
    check_chat_template(cfg.data.chat_template)
    hf = check_model_dir(cfg.model_dir, weights=weights, need_chat_template=cfg.data.chat_template in (None, "tokenizer"))
    if any(s.online for s in preset_stages(cfg.algo.preset)) or cfg.eval.data_path is not None:
        check_verify_fn(cfg.reward.verify_fn)
    for field, path in (("data.path", cfg.data.path), ("eval.data_path", cfg.eval.data_path)):
        if path is not None and not Path(path).is_file():
            if weights:
                raise UserError(f"no data file in {field}={path!r}: expected an existing .parquet or .jsonl file")
            notes.append(f"{field} {path} is not on this machine")
    return hf, notes


def summary(cfg, world: int, dp: int, hf, notes: list[str]) -> str:
    """One paragraph: the model, the layout, the batch and the lengths the run would use; ``dp`` is the
    run validator's (config.check_layout: the one place the world is split), never recomputed here."""
    from red_megatron.algo.presets import preset_stages

    tp, pp, cp = cfg.policy.tp, cfg.policy.pp, cfg.policy.cp
    ep = cfg.policy.ep
    moe = (f"; {hf.num_experts} experts top-{hf.moe_top_k} in {sum(hf.moe_layers)} of {hf.num_layers} layers, "
           f"{hf.num_active_params() / 1e9:.2f}B active, EP {ep} ({hf.num_experts // ep} experts an EP rank)"
           ) if hf.is_moe else ""
    r = cfg.rollout
    online = any(s.online for s in preset_stages(cfg.algo.preset))
    engines = (f"vLLM tp_infer={r.tp_infer} ({r.executor} executor, {world // r.tp_infer} engine(s)), "
               f"max_model_len {r.max_model_len}") if online else "no rollout engine (offline preset)"
    g = cfg.algo.num_online
    text = (f"check OK: {cfg.name} (algo.preset={cfg.algo.preset}, {cfg.steps} steps) on {hf.architecture} "
            f"{hf.num_params() / 1e9:.2f}B from {cfg.model_dir} ({hf.num_layers} layers, {hf.num_heads} heads / "
            f"{hf.num_kv_heads} KV heads, vocab {hf.vocab_size}, {hf.max_position_embeddings} positions); world "
            f"{world} = TP {tp} x PP {pp}{f' x CP {cp}' if cp > 1 else ''} x DP {dp} ({hf.num_layers // pp} layers a stage, "
            f"{hf.num_heads // tp} heads a TP rank, padded vocab {hf.padded_vocab_size(tp)}{moe}); {engines}; "
            f"{cfg.data.global_batch_size} prompts a step ({cfg.data.global_batch_size // dp} a DP rank) x "
            f"(G={g} online + 1 offline), prompts <= {cfg.data.max_prompt_tokens} and responses <= "
            f"{cfg.data.max_response_tokens} tokens, micro_batch_tokens {cfg.policy.micro_batch_tokens}, "
            f"{cfg.policy.dtype}, lr {cfg.policy.lr:g}; run_dir {cfg.run_dir}")
    if notes:
        text += "; note: " + "; ".join(notes)
    return text + "."


def _main(argv: list[str]) -> int:
    from red_megatron.config import check_world

    args = build_parser().parse_args(argv)
    cfg = _resolve(args)
    nproc = args.nproc_per_node
    if nproc is not None and (nproc < 1 or "LOCAL_RANK" in os.environ):
        raise UserError(f"bad --nproc-per-node={nproc} in red-train: expected an int >= 1, outside torchrun "
                        f"(red-train starts it)")
    world = world_size(args.world_size if nproc is None else nproc)
    hf, notes = preflight(cfg, weights=not args.check)
    dp = check_world(cfg, world)  # before megatron or vLLM start
    if args.check:
        print(summary(cfg, world, dp, hf, notes))
        return 0
    if nproc is not None:
        from red_megatron.launch.torchrun import run_torchrun

        return run_torchrun(["--standalone", "--nproc-per-node", str(nproc), "--module", "red_megatron.cli.train",
                             *_without_nproc(argv)])
    from red_megatron.metrics import setup_run_logging

    rank = int(os.environ.get("RANK", "0"))
    lib_log = setup_run_logging(cfg.run_dir, verbose=args.verbose, rank=rank)
    if rank == 0 and not args.verbose:
        # to the log file only (a logger the console filters out): a refusal later in the start-up must be
        # the one line on stderr, not the second
        logging.getLogger("red_run").info("library logs and warnings: %s (--verbose shows them on the console)",
                                          lib_log)
    from red_megatron.console import library_output_to_log
    from red_megatron.run_control import EXIT_INTERRUPTED, RunInterrupted

    t0 = time.time()
    try:  # a refusal leaves the block first: its line goes to the real stderr (red_megatron/console.py)
        with library_output_to_log(lib_log, enabled=not args.verbose):
            from red_megatron.reaper import start_reaper
            from red_megatron.trainer import train

            start_reaper()  # kill -9 of this process must not leave its helper processes behind
            final = train(cfg)
    except RunInterrupted as e:
        if rank == 0:
            print(f"red-train: {e}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if int(os.environ.get("RANK", "0")) == 0:
        keep = {k: v for k, v in final.items() if isinstance(v, (int, float))}
        print(json.dumps({"run_dir": cfg.run_dir, "seconds": round(time.time() - t0, 1), **keep}, indent=1))
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc-per-node":
            skip = True
        elif not a.startswith("--nproc-per-node="):
            out.append(a)
    return out


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # dist checkpointing's helpers start with spawn: keep the guard
    sys.exit(main())
