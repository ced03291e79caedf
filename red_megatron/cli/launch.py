"""red-launch: launch a recipe through NeMo-Run: locally under torchrun, or on Slurm (sbatch + pyxis).

  # 2 processes on this machine (torchrun), tiny CPU recipe, one override
  red-launch --recipe tiny_cpu --executor local --nproc 2 steps=1
  # print the sbatch script for 2 nodes × 8 GPUs, launch nothing
  red-launch --recipe qwen25_7b --executor slurm --nodes 2 --gpus-per-node 8 \\
      --account ACCT --partition batch --time 04:00:00 --container-image IMG \\
      --container-mounts /lustre:/lustre --code-dir /lustre/red-megatron --run-dir /lustre/runs/red7b \\
      --exclusive --mem 0 --dry-run model_dir=/lustre/models/Qwen2.5-7B \\
      data.path=/lustre/data/openr1_math_46k_8192.parquet eval.data_path=/lustre/data/math_eval.parquet
  # a sweep: one task per value (the cartesian product of several --sweep flags)
  red-launch --recipe tiny_cpu --nproc 1 --sweep algo.preset=grpo,red steps=2

Every run is validated here first (recipe + overrides + the launch's world size), so an
invalid combination is refused before anything starts; on Slurm every path the job uses (run dir, model,
data, code) must lie inside a --container-mounts destination. NeMo-Run's files go to <run-dir>/nemo_run
(NEMORUN_HOME; on Slurm the run dir's host side, through its mount). The exit code is 0 only if every
task SUCCEEDED.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from red_megatron.cli.common import add_overrides, add_recipe_args, parser, resolve_run_config
from red_megatron.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    ap = parser("red-launch", __doc__)
    add_recipe_args(ap)  # --config FILE: read here and by the job, at the same path
    ap.add_argument("--run-dir", default=None, help="the run directory (default: the recipe's run_dir); "
                    "sweep tasks get <run-dir>/<label>")
    ap.add_argument("--name", default=None, help="experiment title (default: the recipe's name)")
    ap.add_argument("--executor", choices=("local", "slurm"), default="local")
    ap.add_argument("--nproc", type=int, default=1, help="local: torchrun processes")
    ap.add_argument("--nodes", type=int, default=1, help="slurm: nodes")
    ap.add_argument("--gpus-per-node", type=int, default=8, help="slurm: GPUs a node (and torchrun processes, "
                    "unless --trainer-ranks-per-node)")
    ap.add_argument("--trainer-ranks-per-node", type=int, default=None,
                    help="slurm: torchrun processes a node when fewer than --gpus-per-node: the rest of rank 0's "
                    "node's GPUs go to rollout.placement=disaggregated engines (rollout.engine_devices)")
    ap.add_argument("--account", default=None)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--time", default="04:00:00", help="slurm wall time, [D-]HH:MM:SS")
    ap.add_argument("--exclusive", action="store_true", help="slurm: whole nodes (sbatch --exclusive)")
    ap.add_argument("--cpus-per-task", type=int, default=None,
                    help="slurm: CPUs for the one task a node (torchrun and its workers)")
    ap.add_argument("--mem", default=None, help="slurm: memory a node, e.g. 0 (all of it) or 512G")
    ap.add_argument("--gres", default=None, help="slurm: generic resources, e.g. gpu:8")
    ap.add_argument("--container-image", default=None)
    ap.add_argument("--container-mounts", default="", help="comma-separated SRC:DST[:FLAGS]")
    ap.add_argument("--code-dir", default=None, help="slurm: the repository's path inside the job "
                    "(e.g. on a mount); default: NeMo-Run ships git HEAD to /nemo_run/code")
    ap.add_argument("--ssh-host", default=None, help="slurm: user@login-node to submit through (SSHTunnel); "
                    "default: submit from this machine")
    ap.add_argument("--remote-job-dir", default=None, help="slurm with --ssh-host: NeMo-Run's job files there")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="environment for the job")
    ap.add_argument("--sweep", action="append", default=[], metavar="FIELD=V1,V2",
                    help="one task per value; several flags give their product")
    order = ap.add_mutually_exclusive_group()
    order.add_argument("--sequential", dest="sequential", action="store_true", default=None,
                       help="run sweep tasks one after another (default locally)")
    order.add_argument("--parallel", dest="sequential", action="store_false",
                       help="run sweep tasks at the same time (default on Slurm)")
    ap.add_argument("--detach", action="store_true", help="slurm: return once submitted")
    ap.add_argument("--signal-before", type=int, default=None, metavar="SECONDS",
                    help="slurm: SIGUSR1 to the training processes SECONDS before the time limit; they finish "
                         "the step, save a checkpoint and exit (docs/RUNS.md)")
    ap.add_argument("--verbose", action="store_true", help="pass --verbose to every training task: library "
                    "log lines on the job's console too (default: <run-dir>/logs/library.log only)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands / sbatch scripts; launch nothing")
    ap.add_argument("--script", default=None, help=argparse.SUPPRESS)  # tests: a stand-in for scripts/train.py
    add_overrides(ap)
    return ap


def plan(args) -> tuple[object, list, list[str], Path]:
    """Validate everything that can be validated here; return (spec, tasks, notes, run_dir)."""
    from red_megatron.launch import LaunchSpec, check_launch, parse_sweeps
    from red_megatron.launch.check import engine_devices_for, external_engine_overrides
    from red_megatron.launch.nemo import Task
    from red_megatron.overrides import apply_overrides

    env = {}
    for item in args.env:
        if "=" not in item:
            raise UserError(f"bad environment entry {item!r} in --env: expected KEY=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    spec = LaunchSpec(
        executor=args.executor, nproc=args.nproc, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
        trainer_ranks_per_node=args.trainer_ranks_per_node,
        account=args.account, partition=args.partition, time=args.time, container_image=args.container_image,
        exclusive=args.exclusive, cpus_per_task=args.cpus_per_task, mem=args.mem, gres=args.gres,
        container_mounts=tuple(m for m in args.container_mounts.split(",") if m),
        code_dir=args.code_dir, ssh_host=args.ssh_host, remote_job_dir=args.remote_job_dir, env=env,
        sequential=args.sequential, detach=args.detach, signal_before=args.signal_before,
    )
    base = resolve_run_config(args.recipe, args.config, list(args.overrides))
    run_dir = Path(args.run_dir or base.run_dir)
    points = parse_sweeps(args.sweep)
    tasks, notes = [], []
    for label, sweep_overrides in points:
        task_dir = run_dir if len(points) == 1 else run_dir / label
        cfg = apply_overrides(base, sweep_overrides + [f"run_dir={task_dir}"])
        devices = engine_devices_for(cfg, spec) if cfg.rollout.engine_launch == "spawn" else None
        placed = [f"rollout.engine_devices={devices}"] if devices else external_engine_overrides(cfg, spec)
        if placed:
            cfg = apply_overrides(cfg, placed)
        try:
            notes += check_launch(cfg, spec)
        except ValueError as e:
            raise ValueError(f"task {label}: {e}" if len(points) > 1 else str(e)) from None
        engines = cfg.rollout.num_engines // spec.nodes if cfg.rollout.engine_launch == "external" and \
            cfg.rollout.placement == "disaggregated" and spec.executor == "slurm" else 0
        given = ["--recipe", args.recipe] if args.recipe else []
        if args.config:  # the job reads the file too: locally from any working directory
            given += ["--config", str(Path(args.config).resolve()) if spec.executor == "local" else args.config]
        tasks.append(Task(name=label, args=[*given, "--run-dir", str(task_dir),
                                            *(["--verbose"] if args.verbose else []),
                                            *args.overrides, *sweep_overrides, *placed],
                          engines_per_node=engines, engine_tp=cfg.rollout.tp_infer, run_dir=str(task_dir)))
    return spec, tasks, sorted(set(notes)), run_dir


def base_name(args) -> str:
    from pathlib import PurePath

    return args.recipe and PurePath(args.recipe.split(":")[0]).stem or \
        (PurePath(args.config).stem if args.config else "tiny_cpu")


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec, tasks, notes, run_dir = plan(args)
    except ValueError as e:  # printed by run_cli as "error: launch refused: ..." (exit 2)
        raise UserError(f"launch refused: {e}") from e
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    # NeMo-Run's web stack warns at its import (starlette's deprecations): noise, not the user's concern
    warnings.filterwarnings("ignore", module=r"(fastapi|starlette|leptonai)(\.|$)")
    from red_megatron.launch import nemo

    home = nemo.set_nemorun_home(nemo.launcher_run_dir(spec, run_dir) / "nemo_run")
    script = nemo.train_script_path(spec, args.script)
    title = args.name or base_name(args)
    if args.dry_run:
        print(nemo.render_dry_run(title, spec, tasks, script, home))
        return 0
    states, stopped_by, job_dirs = nemo.launch(title, spec, tasks, script, home)
    rc = nemo.exit_code(states, spec.detach)
    if rc and spec.executor == "local":
        quiet = _local_outcome(states, stopped_by, job_dirs, tasks, home)
        if quiet is not None:
            return quiet
    summary = ", ".join(f"{k}: {v}" for k, v in states.items())
    print(f"[launch] {'OK' if rc == 0 else 'FAILED'} ({summary}); NeMo-Run records in {home}",
          file=sys.stderr if rc else sys.stdout)
    return rc


def _local_outcome(states: dict, stopped_by: str | None, job_dirs: dict, tasks: list, home: Path) -> int | None:
    """A stop (exit 3) or a refusal (exit 2) as one line on stderr, or None: a failure, reported as one.

    NeMo-Run says FAILED for both; each task's exit code comes from the file red_megatron.launch.torchrun wrote.
    """
    from red_megatron.launch import nemo
    from red_megatron.run_control import EXIT_INTERRUPTED

    codes = {}
    for name, state in states.items():
        status = nemo.exit_status(home, name)
        codes[name] = 0 if state == "SUCCEEDED" else (status or {}).get("exit_code", 1)
        if status and status.get("skipped"):
            codes[name] = "skipped"
    failed = {c for c in codes.values() if c != 0}
    run_dirs = {t.name: t.run_dir for t in tasks}
    if failed <= {EXIT_INTERRUPTED, "skipped"} and EXIT_INTERRUPTED in failed:
        parts = [f"{name}: checkpoint in {Path(run_dirs[name]) / 'checkpoints'}" if c == EXIT_INTERRUPTED
                 else f"{name}: not started" for name, c in codes.items() if c != 0]
        why = f"by {stopped_by}" if stopped_by else "by a signal to its processes"
        print(f"red-launch: stopped {why} ({'; '.join(parts)}); run the same command again to resume",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    if failed == {2}:  # the task's own refusal is the launch's one line (run_cli prints it: exit 2)
        lines = [(name, nemo.refusal_line(job_dirs[name], name) or f"refused (its log: {job_dirs[name]})")
                 for name, c in codes.items() if c == 2]
        raise UserError(lines[0][1] if len(tasks) == 1 else "; ".join(f"task {n}: {msg}" for n, msg in lines))
    return None


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
