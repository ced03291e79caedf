"""Refuse a recipe + launch combination that cannot work, in the launcher process, before
NeMo-Run, torchrun or Slurm start anything (a bad 32-node job should fail in one second here,
not after an hour in the queue). Every message names the fields involved.
"""
from __future__ import annotations

from pathlib import Path

from red_megatron.config import check_checkpoint, check_layout
from red_megatron.launch.spec import LaunchSpec


def check_mounts(cfg, spec: LaunchSpec) -> None:
    """Every path the job writes or reads must be inside a container mount (or the job has no container).

    Outside every mount, the run's metrics and checkpoints land in the container's throw-away filesystem
    and the model / data are not there at all. Paths are as the job sees them.
    """
    if spec.executor != "slurm" or not spec.container_image:
        return
    mounts = ",".join(spec.container_mounts) or "none"
    paths = [("--run-dir", cfg.run_dir), ("model_dir", cfg.model_dir), ("data.path", cfg.data.path)]
    if getattr(cfg, "eval", None) is not None and cfg.eval.data_path is not None:
        paths.append(("eval.data_path", cfg.eval.data_path))
    if spec.code_dir:
        paths.append(("--code-dir", spec.code_dir))
    for name, path in paths:
        path = str(path)
        if not path.startswith("/"):
            raise ValueError(f"{name}={path!r} is relative: in the container it must be an absolute path inside "
                             f"a --container-mounts destination (mounts: {mounts})")
        if spec.host_path(path) is None:
            what = ("would write its metrics and checkpoints to the container's throw-away filesystem"
                    if name == "--run-dir" else "would not find it")
            raise ValueError(f"{name}={path} is inside no container mount (--container-mounts {mounts}): the job "
                             f"{what}; mount its directory (SRC:DST) or use a path under a mount's DST")


def check_launch(cfg, spec: LaunchSpec) -> list[str]:
    """Raise ValueError for an impossible layout; return notes on checks that had to be skipped."""
    notes: list[str] = []
    world, per_node = spec.world_size, spec.procs_per_node
    tp, tp_inf = cfg.policy.tp, cfg.rollout.tp_infer

    check_mounts(cfg, spec)
    check_layout(cfg, world)  # TP × PP against the world, the prompt batch against DP
    if per_node % tp != 0:
        raise ValueError(f"policy.tp={tp} must divide the processes per node {per_node}: tensor parallelism "
                         "stays inside a node (NVLink), never across the network")
    if world % tp_inf != 0 or per_node % tp_inf != 0:
        raise ValueError(f"rollout.tp_infer={tp_inf} must divide the processes per node {per_node} and the world "
                         f"size {world}: each vLLM engine spans tp_infer ranks of one node")
    cfg_json = Path(cfg.model_dir) / "config.json"
    if cfg_json.is_file():
        check_checkpoint(cfg)  # head counts / layers against tp, pp, tp_infer
    else:
        notes.append(f"model_dir={cfg.model_dir!r} has no readable config.json here: head/layer divisibility "
                     "is checked when the job starts (scripts/train.py runs check_world first)")
    return notes
