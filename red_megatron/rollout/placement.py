"""Where the rollout engines live in the trainer's world, and how experience reaches every rank.

The trainer's ranks form TP × PP × DP (megatron's order: TP fastest, then DP, then PP); a
data-parallel replica (its TP × PP ranks) trains on its own slice of the prompts, which its
model-parallel source rank (``mp_src``) must hold as experience and broadcast to the replica.
vLLM's own layout is independent of that:

- ``tp_infer == 1`` (``uni`` executor): every rank builds an in-process engine (in a torchrun
  world vLLM's start-up creates its groups with ``new_group`` over the whole world, a collective:
  a rank that built none would leave the others waiting forever). The replica's ``mp_src``
  generates for the replica; the engines of its other ranks stay idle and are not refit.
- ``tp_infer > 1`` (``external_launcher``): vLLM splits the whole torchrun world into engines of
  ``tp_infer`` consecutive ranks, and every rank builds its part (vLLM's group creation is a
  collective over the world). An engine generates for every replica whose ``mp_src`` it holds,
  so ``tp_infer`` may be smaller than the trainer's TP (several engines in a replica; those
  without a source rank only take part in refits), equal to it, or larger (one engine over
  several replicas: their prompts are batched into one call). Every rank of an engine must pass
  the same prompts, so they are first gathered within the engine.

Nothing here imports megatron or vllm: :func:`plan_rollout` takes the trainer's
``ParallelGroups`` (duck-typed) and the rollout config, and :func:`check_placement` is the rule
the run validator applies before anything starts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


def check_placement(*, world_size: int, tp_infer: int, executor: str) -> None:
    """The layouts this planner implements; ValueError naming the fields otherwise."""
    if tp_infer > 1 and executor != "external_launcher":
        raise ValueError(f"rollout.tp_infer={tp_infer} needs rollout.executor='external_launcher' (an engine spans "
                         f"{tp_infer} trainer ranks), got rollout.executor={executor!r}")
    if tp_infer == 1 and executor != "uni":
        raise ValueError(f"rollout.executor={executor!r} with rollout.tp_infer=1: use 'uni' (one in-process engine "
                         f"per data-parallel replica)")
    if world_size % tp_infer != 0:
        raise ValueError(f"rollout.tp_infer={tp_infer} must divide the world size {world_size} (vLLM's "
                         f"external_launcher splits the whole torchrun world into engines of tp_infer ranks)")


def check_engines(*, placement: str, tp_infer: int, executor: str, num_engines: int, max_staleness: int,
                  global_batch_size: int, engine_devices: str | None = None, partial: bool = False,
                  engine_launch: str = "spawn") -> None:
    """The disaggregated placement's rules (rollout/pool.py, docs/ASYNC.md); ValueError naming the fields."""
    if engine_launch == "external" and placement != "disaggregated":
        raise ValueError("rollout.engine_launch='external' needs rollout.placement='disaggregated' (engines that join "
                         "the trainer from other tasks)")
    if engine_launch == "external" and engine_devices is not None:
        raise ValueError(f"rollout.engine_devices={engine_devices!r} is for engines rank 0 starts "
                         f"(rollout.engine_launch='spawn'); external engines get their devices from their own task")
    if partial and (placement != "disaggregated" or max_staleness < 1):
        raise ValueError(f"rollout.partial=true needs rollout.placement='disaggregated' and rollout.max_staleness >= 1 "
                         f"(got placement={placement!r}, max_staleness={max_staleness}): a sample that spans policy "
                         f"versions is at least one version old; at max_staleness=0 the lock-step loop is the same run")
    if placement == "colocated":
        if max_staleness > 0:
            raise ValueError(f"rollout.max_staleness={max_staleness} needs rollout.placement='disaggregated' (the "
                             f"colocated engines share the trainer's ranks: nothing can overlap the update)")
        if engine_devices is not None:
            raise ValueError(f"rollout.engine_devices={engine_devices!r} is for rollout.placement='disaggregated'")
        if num_engines != 1:
            raise ValueError(f"rollout.num_engines={num_engines} is for rollout.placement='disaggregated'; colocated "
                             f"engines follow the trainer's layout (rollout.tp_infer)")
        return
    if (tp_infer == 1) != (executor == "uni"):
        raise ValueError(f"rollout.placement='disaggregated': an engine of rollout.tp_infer={tp_infer} process(es) "
                         f"needs rollout.executor={'uni' if tp_infer == 1 else 'external_launcher'!r} (each engine is "
                         f"a torchrun group of its own), got {executor!r}")
    if num_engines > global_batch_size:
        raise ValueError(f"rollout.num_engines={num_engines} exceeds data.global_batch_size={global_batch_size}: "
                         f"the prompts of a step are shared over the engines, some would never generate")


@dataclass(frozen=True, kw_only=True)
class RolloutPlacement:
    """This rank's part in rollouts (the same plan is computed identically on every rank)."""

    builds_engine: bool
    engine_ranks: tuple[int, ...]  # global ranks of this rank's engine (empty: no engine here)
    served_replicas: tuple[int, ...]  # dp ranks whose prompts this rank's engine generates, in order
    # (empty: an idle engine, built only because vLLM's start-up is collective; never refit)
    engine_group: object | None  # process group over engine_ranks (None when it has one rank)
    needs_experience: bool  # this rank is the mp_src of a served replica (the others only join the collective)

    @property
    def generates(self) -> bool:
        return self.builds_engine and bool(self.served_replicas)


def plan_rollout(groups, *, tp_infer: int, executor: str, online: bool) -> RolloutPlacement:
    """Collective over the world (one all_gather of each rank's replica and source) when ``online``."""
    check_placement(world_size=groups.world_size, tp_infer=tp_infer, executor=executor)
    none = RolloutPlacement(builds_engine=False, engine_ranks=(), served_replicas=(), engine_group=None,
                            needs_experience=False)
    if not online:
        return none
    if tp_infer == 1:
        served = (groups.dp_rank,) if groups.is_mp_src else ()
        return RolloutPlacement(builds_engine=True, engine_ranks=(groups.rank,), served_replicas=served,
                                engine_group=None, needs_experience=groups.is_mp_src)
    world = groups.world_size
    table = [None] * world  # rank -> (dp_rank, mp_src)
    if world > 1:
        dist.all_gather_object(table, (groups.dp_rank, groups.mp_src))
    else:
        table = [(groups.dp_rank, groups.mp_src)]
    engines = [tuple(range(e, e + tp_infer)) for e in range(0, world, tp_infer)]
    engine_group = None
    mine = ()
    for ranks in engines:  # dist.new_group is collective: every rank creates every engine's group
        g = dist.new_group(list(ranks)) if len(ranks) > 1 else None
        if groups.rank in ranks:
            mine, engine_group = ranks, g
    served = tuple(sorted({dp for r, (dp, src) in enumerate(table) if r == src and r in mine}))
    return RolloutPlacement(builds_engine=True, engine_ranks=mine, served_replicas=served, engine_group=engine_group,
                            needs_experience=groups.is_mp_src)


def gather_prompts(placement: RolloutPlacement, dp_rank: int, examples: list) -> list[list]:
    """Every served replica's examples, in ``served_replicas`` order, on every rank of the engine."""
    if placement.engine_group is None:
        return [examples]
    box = [None] * len(placement.engine_ranks)
    dist.all_gather_object(box, (dp_rank, examples), group=placement.engine_group)
    by_replica = dict(box)
    return [by_replica[r] for r in placement.served_replicas]
