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


def engine_devices_for(cfg, spec: LaunchSpec) -> str | None:
    """The ``rollout.engine_devices`` a Slurm launch with spare GPUs gives its engines (None: nothing to add).

    Disaggregated engines are started by trainer rank 0 on its own node; with ``--trainer-ranks-per-node N``
    below ``--gpus-per-node`` the GPUs N.. of that node are free, and engine i gets the i-th of them."""
    r = cfg.rollout
    if spec.executor != "slurm" or not spec.spare_gpus or r.placement != "disaggregated" or r.engine_devices \
            or r.num_engines * r.tp_infer > len(spec.spare_gpus):  # too few: check_engine_gpus says so
        return None
    return ",".join(str(d) for d in spec.spare_gpus[:r.num_engines * r.tp_infer])


def external_engine_overrides(cfg, spec: LaunchSpec) -> list[str]:
    """Engines as a Slurm step of their own on every node's spare GPUs (``rollout.engine_launch=external``):
    as many engines of tp_infer GPUs as each node's spare GPUs hold, all joining rank 0, which listens on its
    host name."""
    r = cfg.rollout
    if spec.executor != "slurm" or not spec.spare_gpus or r.placement != "disaggregated" \
            or r.engine_launch != "external":
        return []
    per_node = len(spec.spare_gpus) // r.tp_infer
    if per_node < 1:
        raise ValueError(f"rollout.tp_infer={r.tp_infer}: an engine needs {r.tp_infer} GPUs of one node, but "
                         f"--trainer-ranks-per-node leaves {len(spec.spare_gpus)} a node ({spec.spare_gpus})")
    return [f"rollout.num_engines={spec.nodes * per_node}", "rollout.listen_host=auto"]


def check_engine_gpus(cfg, spec: LaunchSpec) -> list[str]:
    """Spare GPUs only with disaggregated engines that use them; enough of them for every engine."""
    r0 = cfg.rollout
    if spec.executor == "slurm" and not spec.spare_gpus and r0.placement == "disaggregated" \
            and r0.engine_launch == "external":
        raise ValueError(f"rollout.engine_launch='external' on Slurm puts the engines on each node's spare GPUs: set "
                         f"--trainer-ranks-per-node below --gpus-per-node={spec.gpus_per_node}")
    if spec.executor != "slurm" or not spec.spare_gpus:
        return []
    r, spare, n = cfg.rollout, spec.spare_gpus, spec.procs_per_node
    if r.placement != "disaggregated":
        raise ValueError(f"--trainer-ranks-per-node={n} < --gpus-per-node={spec.gpus_per_node} leaves GPUs {spare} "
                         f"of every node idle: it is for rollout.placement='disaggregated' (engines on those GPUs), "
                         f"got rollout.placement={r.placement!r}")
    if r.engine_launch == "external":  # a step of its own on every node (launch/nemo.py engine_setup_lines)
        return []
    if r.engine_devices:
        devs = [d.strip() for d in str(r.engine_devices).split(",")]
        busy = [d for d in devs if d.isdigit() and int(d) < n]
        if busy:
            raise ValueError(f"rollout.engine_devices={r.engine_devices!r} names GPU(s) {busy} that trainer ranks "
                             f"0..{n - 1} of rank 0's node use (--trainer-ranks-per-node={n}); free: {spare}")
    elif r.num_engines * r.tp_infer > len(spare):
        raise ValueError(f"rollout.num_engines={r.num_engines} engines of rollout.tp_infer={r.tp_infer} GPUs need "
                         f"{r.num_engines * r.tp_infer} GPUs on rank 0's node, but --trainer-ranks-per-node={n} of "
                         f"--gpus-per-node={spec.gpus_per_node} leaves {len(spare)} ({spare})")
    notes = []
    if spec.nodes > 1:
        notes.append(f"engines run on rank 0's node only: GPUs {spare} of the other {spec.nodes - 1} node(s) stay "
                     "idle (rollout.engine_launch=external puts engines on every node's spare GPUs)")
    return notes


def check_launch(cfg, spec: LaunchSpec) -> list[str]:
    """Raise ValueError for an impossible layout; return notes on checks that had to be skipped."""
    notes: list[str] = []
    world, per_node = spec.world_size, spec.procs_per_node
    tp, tp_inf = cfg.policy.tp, cfg.rollout.tp_infer

    check_mounts(cfg, spec)
    notes += check_engine_gpus(cfg, spec)
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
