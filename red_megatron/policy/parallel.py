"""Model-parallel state: the one place the project touches megatron's ``parallel_state``.

``init_model_parallel(tp, pp, cp, ep=)`` initialises megatron's groups (megatron's own modules read
them from its globals) and returns a frozen :class:`ParallelGroups`: every group, rank and size
the project's code needs, read once. ``MegatronPolicy`` holds it and hands it to model
building, HF import/export and streaming, checkpoints and the passes (ARCHITECTURE.md rule 4:
distribution enters through explicit groups). No other module of the project reads
``parallel_state``; tests/test_parallel_groups.py enforces that.

It also enables the CPU compat layer (no-op on a GPU) and seeds megatron's per-TP-rank RNG
streams, so that the same seed gives the same weights and dropout on CPU and GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from red_megatron.policy import compat
from red_megatron.policy.config import PolicyConfig, check_expert_grid


@dataclass(frozen=True, kw_only=True)
class ParallelGroups:
    """This rank's place in the TP × CP × DP × PP grid, with the groups its collectives take.

    A group is ``None``-free: at size 1 it is still a valid group, but the project's helpers run
    no collective on it (one code path for 1 GPU and 1,000). ``mp`` is the replica's group
    (TP × CP × PP of one data-parallel rank); ``mp_src`` its source rank (TP and CP rank 0 of the first
    pipeline stage), where a replica's rollouts are gathered and from which they are broadcast.
    """

    rank: int
    world_size: int
    tp_group: object
    tp_rank: int
    tp_size: int
    pp_group: object
    pp_rank: int
    pp_size: int
    pp_ranks: tuple[int, ...]  # global ranks of this rank's pipeline, stage order
    cp_group: object
    cp_rank: int
    cp_size: int
    dp_group: object  # data parallel without CP (the replicas that see different prompts)
    dp_rank: int
    dp_size: int
    dp_cp_group: object  # data parallel × context parallel (gradient reduction)
    mp_group: object  # the replica: TP × CP × PP ranks sharing one data-parallel rank
    mp_size: int
    mp_src: int  # global rank
    device: torch.device
    # expert parallelism (megatron's expert grid: expert-TP × EP × expert-DP × PP over the same ranks):
    # the ranks splitting the routed experts, and those splitting one expert's matrices (= TP here)
    ep_group: object = None
    ep_rank: int = 0
    ep_size: int = 1
    etp_group: object = None
    etp_rank: int = 0
    etp_size: int = 1

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def pp_first_rank(self) -> int:
        return self.pp_ranks[0]

    @property
    def pp_last_rank(self) -> int:
        return self.pp_ranks[-1]

    @property
    def is_mp_src(self) -> bool:
        return self.rank == self.mp_src

    @property
    def loss_group(self):
        """The TP group for the vocab-parallel loss, None at TP=1 (no collective)."""
        return self.tp_group if self.tp_size > 1 else None

    def layout(self) -> dict:
        out = {"tp": self.tp_size, "pp": self.pp_size, "cp": self.cp_size, "dp": self.dp_size,
               "world": self.world_size}
        if self.ep_size > 1:
            out["ep"] = self.ep_size
        return out

    # --- the trainer's few collectives ---------------------------------------------------------------
    def dp_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the data-parallel replicas (a copy; the input is left alone)."""
        out = t.detach().clone()
        if self.dp_size > 1:
            moved = out.to(self.device)
            dist.all_reduce(moved, group=self.dp_group)
            out = moved.to(t.device)
        return out

    def broadcast_from_mp_src(self, obj):
        """The source rank's object on every rank of this replica's model-parallel group."""
        if self.mp_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=self.mp_src, group=self.mp_group)
        return box[0]


_current: ParallelGroups | None = None


def _ensure_process_group() -> None:
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" not in os.environ:  # single process without a launcher: no port needed
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend)


def _read_groups() -> ParallelGroups:
    """Everything the project needs from megatron's globals, read once, right after initialisation."""
    from megatron.core import parallel_state as ps

    rank, world = dist.get_rank(), dist.get_world_size()
    tp_rank, pp_rank = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank()
    pp_group = ps.get_pipeline_model_parallel_group()
    dp_rank = ps.get_data_parallel_rank()
    is_src = tp_rank == 0 and pp_rank == 0 and ps.get_context_parallel_rank() == 0
    # A replica is every rank with this data-parallel rank: TP × CP × PP (megatron's model-parallel
    # group leaves CP out, so it is built here). new_group is collective: every rank builds every one.
    table = [None] * world
    dist.all_gather_object(table, (dp_rank, is_src))
    mp_group = None
    for d in sorted({d for d, _ in table}):
        ranks = [r for r, (dd, _) in enumerate(table) if dd == d]
        g = dist.new_group(ranks) if world > 1 else dist.group.WORLD
        if d == dp_rank:
            mp_group, mp_ranks = g, ranks
    mp_size = len(mp_ranks)
    mp_src = next(r for r in mp_ranks if table[r][1])
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return ParallelGroups(
        rank=rank, world_size=world,
        tp_group=ps.get_tensor_model_parallel_group(), tp_rank=tp_rank,
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_group=pp_group, pp_rank=pp_rank, pp_size=ps.get_pipeline_model_parallel_world_size(),
        pp_ranks=tuple(dist.get_process_group_ranks(pp_group)),
        cp_group=ps.get_context_parallel_group(), cp_rank=ps.get_context_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        dp_group=ps.get_data_parallel_group(), dp_rank=dp_rank,
        dp_size=ps.get_data_parallel_world_size(),
        dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True),
        mp_group=mp_group, mp_size=mp_size, mp_src=mp_src, device=device,
        ep_group=ps.get_expert_model_parallel_group(), ep_rank=ps.get_expert_model_parallel_rank(),
        ep_size=ps.get_expert_model_parallel_world_size(),
        etp_group=ps.get_expert_tensor_parallel_group(), etp_rank=ps.get_expert_tensor_parallel_rank(),
        etp_size=ps.get_expert_tensor_parallel_world_size())


def init_model_parallel(tp: int = 1, pp: int = 1, seed: int = 1234, *, cp: int = 1, ep: int = 1) -> ParallelGroups:
    """Initialise megatron's TP/CP/PP/DP groups on the default process group, seed its RNGs, and
    return them as one frozen :class:`ParallelGroups`.

    Works inside an already-initialised default group (the tests' gloo pool, torchrun) and
    initialises one from the environment (RANK/WORLD_SIZE/MASTER_*) or as a 1-process group
    otherwise. world_size must be a multiple of tp*cp*pp; the rest is data parallel. ``ep`` splits the
    routed experts of an MoE model over ep ranks of the data-parallel (× context-parallel) ranks, with the
    experts' matrices split over tp (megatron's expert grid needs world % (tp*ep*pp) == 0).
    """
    global _current
    # the sizes' rules are PolicyConfig's (the run's own fields): one statement of them
    cfg = PolicyConfig(tp=tp, pp=pp, cp=cp, ep=ep, seed=seed)
    compat.enable()
    _ensure_process_group()
    world = dist.get_world_size()
    if world % (cfg.tp * cfg.cp * cfg.pp) != 0:
        raise ValueError(f"world_size {world} is not a multiple of tp*cp*pp = {cfg.tp}*{cfg.cp}*{cfg.pp}")
    check_expert_grid(world, tp=cfg.tp, pp=cfg.pp, ep=cfg.ep)
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if ps.model_parallel_is_initialized():
        destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp,
        pipeline_model_parallel_size=cfg.pp,
        context_parallel_size=cfg.cp,
        expert_model_parallel_size=cfg.ep,
        expert_tensor_parallel_size=cfg.tp,
        create_gloo_process_groups=not torch.cuda.is_available(),
    )
    torch.manual_seed(cfg.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    _current = _read_groups()
    return _current


def current() -> ParallelGroups:
    """The groups of the last ``init_model_parallel`` (for entry points and tests; library code
    takes a ParallelGroups argument instead)."""
    if _current is None:
        raise RuntimeError("model parallelism is not initialised: call parallel.init_model_parallel first")
    return _current


def is_initialized() -> bool:
    return _current is not None


def destroy_model_parallel() -> None:
    """Tear down megatron's groups (the default process group stays)."""
    global _current
    from megatron.core import parallel_state as ps

    _current = None
    ps.destroy_model_parallel()
    _destroy_subgroups()
    try:  # megatron keeps a global microbatch calculator in some versions
        from megatron.core import num_microbatches_calculator as nmc

        nmc.destroy_num_microbatches_calculator()
    except (ImportError, AttributeError):
        pass


def _destroy_subgroups() -> None:
    """Destroy every process group but the default one.

    megatron's destroy_model_parallel only drops its references; the ~20 groups each init
    creates stay alive, and gloo keeps threads for every one. A process that initialises and
    destroys model parallelism repeatedly (the tests' worker pool) was seen at 2,500 threads.
    """
    from torch.distributed import distributed_c10d as c10d

    if not dist.is_initialized():
        return
    default = c10d._get_default_group()
    for pg in list(c10d._world.pg_map):  # noqa: SLF001 - the registry is the only list of live groups
        if pg is not default:
            dist.destroy_process_group(pg)
