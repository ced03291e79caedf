"""Where this rank sits, for the trainer: data-parallel reductions and the rollout source rank.

Rollouts are generated once per data-parallel replica, on the model-parallel source rank
(TP rank 0 of the first pipeline stage), and handed to the rest of the replica's TP×PP ranks.
Every collective takes its group explicitly; at size 1 none runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(kw_only=True)
class Topology:
    rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    dp_group: object
    mp_group: object
    mp_size: int
    mp_src: int  # global rank of this replica's rollout source
    is_mp_src: bool

    @classmethod
    def from_megatron(cls) -> "Topology":
        from megatron.core import parallel_state as ps

        mp_group = ps.get_model_parallel_group()
        mp_size = dist.get_world_size(mp_group)
        is_src = ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0
        rank = dist.get_rank()
        if mp_size > 1:
            flags = [None] * mp_size
            dist.all_gather_object(flags, (rank, is_src), group=mp_group)
            mp_src = next(r for r, s in flags if s)
        else:
            mp_src = rank
        dp_group = ps.get_data_parallel_group()
        return cls(rank=rank, world_size=dist.get_world_size(), dp_rank=ps.get_data_parallel_rank(),
                   dp_size=ps.get_data_parallel_world_size(), dp_group=dp_group, mp_group=mp_group,
                   mp_size=mp_size, mp_src=mp_src, is_mp_src=is_src)

    def dp_all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the data-parallel ranks (a copy; the input is left alone)."""
        out = t.detach().clone()
        if self.dp_size > 1:
            dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else out.device
            moved = out.to(dev)
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
