"""LaunchSpec: where and how a recipe runs (executor, processes, cluster fields), validated.

The recipe (configs/) says *what* runs; this says *where*. Kept free of nemo_run imports so
the launcher can validate a request in milliseconds before the 5 s NeMo-Run import, and so
tests can build specs without it.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Literal

_TIME_RE = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$|^\d+$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")  # sbatch --mem: a size, default unit MB
_GRES_RE = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+)*(:\d+)?(,[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+)*(:\d+)?)*$")
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(kw_only=True)
class LaunchSpec:
    executor: Literal["local", "slurm"] = "local"
    nproc: int = 1  # local: torchrun processes on this machine
    nodes: int = 1  # slurm
    gpus_per_node: int = 8  # slurm: GPUs a node (sbatch --gpus-per-node)
    # slurm: torchrun's --nproc-per-node (trainer ranks a node); None: gpus_per_node. Fewer leaves GPUs
    # trainer_ranks_per_node.. of rank 0's node to disaggregated rollout engines (rollout.engine_devices)
    trainer_ranks_per_node: int | None = None
    account: str | None = None
    partition: str | None = None
    time: str = "04:00:00"
    container_image: str | None = None
    container_mounts: tuple[str, ...] = ()
    code_dir: str | None = None  # the repository's path inside the job; None: NeMo-Run packages git HEAD
    ssh_host: str | None = None  # user@host of the login node; None: sbatch runs here (LocalTunnel)
    remote_job_dir: str | None = None  # with ssh_host: where NeMo-Run keeps job files on the cluster
    exclusive: bool = False  # slurm: --exclusive (whole nodes)
    cpus_per_task: int | None = None  # slurm: --cpus-per-task (one task a node: the node's CPUs for torchrun)
    mem: str | None = None  # slurm: --mem per node, e.g. 0 (all), 512G
    gres: str | None = None  # slurm: --gres, e.g. gpu:8
    env: dict[str, str] = field(default_factory=dict)
    sequential: bool | None = None  # None: sequential locally (one machine), parallel on Slurm
    detach: bool = False  # slurm: return after sbatch instead of waiting for the job
    # slurm: SIGUSR1 to the training processes this many seconds before the time limit (sbatch --signal):
    # they finish the step, save a checkpoint and exit 3 (docs/RUNS.md); None: only Slurm's SIGTERM at the limit
    signal_before: int | None = None

    def __post_init__(self) -> None:
        if self.executor not in ("local", "slurm"):
            raise ValueError(f"--executor must be 'local' or 'slurm', got {self.executor!r}")
        if not (isinstance(self.nproc, int) and self.nproc >= 1):
            raise ValueError(f"--nproc must be an int >= 1, got {self.nproc!r}")
        if not (isinstance(self.nodes, int) and self.nodes >= 1):
            raise ValueError(f"--nodes must be an int >= 1, got {self.nodes!r}")
        if not (isinstance(self.gpus_per_node, int) and 1 <= self.gpus_per_node <= 64):
            raise ValueError(f"--gpus-per-node must be an int in [1, 64], got {self.gpus_per_node!r}")
        if self.trainer_ranks_per_node is not None:
            if self.executor != "slurm":
                raise ValueError("--trainer-ranks-per-node needs --executor slurm (locally, --nproc is the trainer "
                                 "ranks and rollout.engine_devices the engines' devices)")
            n = self.trainer_ranks_per_node
            if not (isinstance(n, int) and 1 <= n <= self.gpus_per_node):
                raise ValueError(f"--trainer-ranks-per-node must be an int in [1, --gpus-per-node="
                                 f"{self.gpus_per_node}], got {n!r}")
        if self.executor == "local" and self.nodes != 1:
            raise ValueError(f"--nodes={self.nodes} needs --executor slurm (the local executor is one machine)")
        if self.executor == "slurm":
            if not self.account:
                raise ValueError("--account is required with --executor slurm")
            if not self.container_image:
                # NeMo-Run 0.11.1 assumes pyxis; without a container its generated srun paths are wrong
                raise ValueError("--container-image is required with --executor slurm (NeMo-Run runs the job "
                                 "in a pyxis/enroot container)")
            if not _TIME_RE.match(self.time):
                raise ValueError(f"--time={self.time!r}: expected [D-]HH:MM:SS or minutes")
            for m in self.container_mounts:
                if ":" not in m:
                    raise ValueError(f"--container-mounts entry {m!r}: expected SRC:DST[:FLAGS]")
            if self.cpus_per_task is not None and not (isinstance(self.cpus_per_task, int) and self.cpus_per_task >= 1):
                raise ValueError(f"--cpus-per-task must be an int >= 1, got {self.cpus_per_task!r}")
            if self.mem is not None and not _MEM_RE.match(str(self.mem)):
                raise ValueError(f"--mem={self.mem!r}: expected a size such as 0 (all of it), 512G or 64000M")
            if self.gres is not None and not _GRES_RE.match(str(self.gres)):
                raise ValueError(f"--gres={self.gres!r}: expected NAME[:TYPE][:COUNT][,...], e.g. gpu:8")
            if self.remote_job_dir and not self.ssh_host:
                raise ValueError("--remote-job-dir needs --ssh-host (it is a path on the login node)")
            if self.ssh_host and not self.remote_job_dir:
                raise ValueError("--ssh-host needs --remote-job-dir (where job files go on the cluster)")
        if self.executor != "slurm":
            for flag, v in (("--exclusive", self.exclusive), ("--cpus-per-task", self.cpus_per_task),
                            ("--mem", self.mem), ("--gres", self.gres)):
                if v:
                    raise ValueError(f"{flag} is a Slurm resource: it needs --executor slurm")
        if self.signal_before is not None:
            if self.executor != "slurm":
                raise ValueError("--signal-before needs --executor slurm (locally, send the run SIGTERM or SIGINT)")
            if not (isinstance(self.signal_before, int) and 1 <= self.signal_before <= 65535):
                raise ValueError(f"--signal-before must be an int of seconds in [1, 65535] (sbatch --signal's "
                                 f"range), got {self.signal_before!r}")
        if self.detach and self.executor != "slurm":
            raise ValueError("--detach is only supported with --executor slurm")

    @property
    def world_size(self) -> int:
        """Trainer ranks (torchrun's world)."""
        return self.procs_per_node * (1 if self.executor == "local" else self.nodes)

    @property
    def procs_per_node(self) -> int:
        """Trainer ranks a node (torchrun's --nproc-per-node)."""
        if self.executor == "local":
            return self.nproc
        return self.gpus_per_node if self.trainer_ranks_per_node is None else self.trainer_ranks_per_node

    @property
    def spare_gpus(self) -> list[int]:
        """GPU indices of a Slurm node that no trainer rank uses (torchrun's local ranks take 0..N-1)."""
        return list(range(self.procs_per_node, self.gpus_per_node)) if self.executor == "slurm" else []

    def mounts(self) -> list[tuple[str, str]]:
        """(host source, container destination) of each --container-mounts entry."""
        return [(m.split(":")[0], m.split(":")[1]) for m in self.container_mounts]

    def host_path(self, path: str) -> str | None:
        """The host path a container path maps to through the mounts (the deepest mount wins); None: unmounted."""
        best = None
        for src, dst in self.mounts():
            d = dst.rstrip("/") or "/"
            if path == d or path.startswith(d.rstrip("/") + "/"):
                if best is None or len(d) > len(best[1]):
                    best = (src, d)
        if best is None:
            return None
        rest = path[len(best[1]):].lstrip("/")
        return f"{best[0].rstrip('/')}/{rest}" if rest else best[0]

    @property
    def run_sequential(self) -> bool:
        return self.executor == "local" if self.sequential is None else self.sequential


def parse_sweeps(sweeps: list[str]) -> list[tuple[str, list[str]]]:
    """``["algo.preset=grpo,red", "seed=0,1"]`` -> one (label, overrides) per point of the product.

    With no sweep: one point, label "train", no extra overrides.
    """
    axes: list[tuple[str, list[str]]] = []
    for item in sweeps:
        if "=" not in item:
            raise ValueError(f"--sweep {item!r}: expected dotted.field=v1,v2,...")
        key, values = item.split("=", 1)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not key.strip() or not vals:
            raise ValueError(f"--sweep {item!r}: expected dotted.field=v1,v2,... with at least one value")
        if len(set(vals)) != len(vals):
            raise ValueError(f"--sweep {item!r}: repeated values")
        if any(k == key.strip() for k, _ in axes):
            raise ValueError(f"--sweep {key.strip()!r} given twice")
        axes.append((key.strip(), vals))
    if not axes:
        return [("train", [])]
    points = []
    for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in axes]):
        overrides = [f"{k}={v}" for k, v in combo]
        label = _NAME_RE.sub("_", "-".join(f"{k.split('.')[-1]}_{v}" for k, v in combo))[:80]
        points.append((label, overrides))
    return points
