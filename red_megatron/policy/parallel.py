"""Megatron model-parallel state: initialise / destroy, and small accessors for groups and ranks.

Why a wrapper: megatron keeps its groups in module globals. Everything else in the project takes
explicit process groups (ARCHITECTURE.md rule 4), so the trainer calls ``init_model_parallel``
once and then hands ``tp_group()`` / ``pp_group()`` / ``dp_group()`` to the code that needs them.
It also enables the CPU compat layer (no-op on a GPU) and seeds megatron's per-TP-rank RNG
streams, so that the same seed gives the same weights and dropout on CPU and GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from red_megatron.policy import compat


@dataclass(kw_only=True)
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("tp", "pp"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"ParallelConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ParallelConfig.seed must be an int >= 0, got {self.seed!r}")


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


def init_model_parallel(tp: int = 1, pp: int = 1, seed: int = 1234) -> None:
    """Initialise megatron's TP/PP/DP groups on the default process group and seed its RNGs.

    Works inside an already-initialised default group (the tests' gloo pool, torchrun) and
    initialises one from the environment (RANK/WORLD_SIZE/MASTER_*) or as a 1-process group
    otherwise. world_size must be a multiple of tp*pp; the rest is data parallel.
    """
    cfg = ParallelConfig(tp=tp, pp=pp, seed=seed)
    compat.enable()
    _ensure_process_group()
    world = dist.get_world_size()
    if world % (cfg.tp * cfg.pp) != 0:
        raise ValueError(f"world_size {world} is not a multiple of tp*pp = {cfg.tp}*{cfg.pp}")
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp,
        pipeline_model_parallel_size=cfg.pp,
        create_gloo_process_groups=not torch.cuda.is_available(),
    )
    torch.manual_seed(cfg.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)


def destroy_model_parallel() -> None:
    """Tear down megatron's groups (the default process group stays)."""
    from megatron.core import parallel_state as ps

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


def is_initialized() -> bool:
    from megatron.core import parallel_state as ps

    return ps.model_parallel_is_initialized()


def tp_group():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_group()


def pp_group():
    from megatron.core import parallel_state as ps

    return ps.get_pipeline_model_parallel_group()


def dp_group(with_context_parallel: bool = False):
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_group(with_context_parallel=with_context_parallel)


def tp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_rank()


def tp_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_world_size()


def pp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_pipeline_model_parallel_rank()


def pp_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_pipeline_model_parallel_world_size()


def dp_rank() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_rank()


def dp_size() -> int:
    from megatron.core import parallel_state as ps

    return ps.get_data_parallel_world_size()


def is_first_stage() -> bool:
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_first_stage(ignore_virtual=True)


def is_last_stage() -> bool:
    from megatron.core import parallel_state as ps

    return ps.is_pipeline_last_stage(ignore_virtual=True)


def pp_first_rank() -> int:
    """Global rank of the first pipeline stage in this rank's pipeline group."""
    from megatron.core import parallel_state as ps

    return ps.get_pipeline_model_parallel_first_rank()


def pp_last_rank() -> int:
    """Global rank of the last pipeline stage in this rank's pipeline group."""
    from megatron.core import parallel_state as ps

    return ps.get_pipeline_model_parallel_last_rank()
