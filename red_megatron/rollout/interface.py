"""The one rollout interface the trainer sees, and the one place that picks its implementation.

A :class:`Rollout` turns the prompt stream into experience and keeps its engines' weights current:

    exp = rollout.take(step)           this replica's scored experience of batch ``step``
    m   = rollout.refit(stream, v)     collective: every rank walks the policy's HF-named weights
    m  |= rollout.step_metrics()       what the last take/refit measured (waits, staleness, busy time)
    rollout.close(run_dir)

Every method is called by every trainer rank in the same order (a collective over the trainer's
world where the implementation needs one). The implementation owns the prompt loader: it may queue
batches ahead (disaggregated engines at staleness k), so only it knows the loader state a
checkpoint must hold (:meth:`Rollout.loader_state`, :meth:`Rollout.resume`).

Implementations, chosen once by :func:`build_rollout`:
- :class:`~red_megatron.rollout.colocated.ColocatedRollout`: engines in the trainer's processes
  (rollout/placement.py says which rank generates for which replica); also the offline-only presets,
  which build no engine.
- :class:`~red_megatron.rollout.disaggregated.DisaggregatedRollout`: engine processes of their own,
  bounded staleness (docs/ASYNC.md), one batch per generation call;
- :class:`~red_megatron.rollout.partial.PartialRollout`: the same engines generating continuously,
  a step taking the first complete prompt groups, samples spanning policy versions.
- :class:`~red_megatron.rollout.replay.ReplayedRollout`: a recorded run's experience (layout tests).
:class:`~red_megatron.rollout.replay.RecordingRollout` wraps any of them and writes what they hand out.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from red_megatron.experience import Experience


class Rollout(ABC):
    timeline = None  # a run timeline (rollout/timeline.py) where the implementation keeps one
    local_engine = None  # an engine in this process that others may use between steps (evaluation), if any

    @abstractmethod
    def take(self, step: int) -> Experience:
        """This replica's experience for training step ``step`` (0-based), on every rank of the replica."""

    @abstractmethod
    def refit(self, stream, version: int, step: int) -> dict:
        """Collective: the engines sample from the policy ``version`` (optimiser steps) from now on (or, with
        queued generations, after them). Every rank must walk ``stream`` to its end."""

    @abstractmethod
    def loader_state(self, step: int) -> dict:
        """The prompt loader's state after batch ``step - 1``, the last one trained (what a checkpoint after
        ``step`` steps holds)."""

    @abstractmethod
    def resume(self, step: int, loader_state: dict) -> None:
        """Continue at ``step`` from a checkpoint's loader state (the engines are refit by the caller)."""

    def step_metrics(self, since: float) -> dict:
        """Metrics of the last take and refit; ``since``: the step's start on the timeline's clock."""
        return {}

    def finish(self) -> None:
        """After the last step: wait for work still queued (the last refit), so its failure is reported."""

    def close(self, run_dir=None) -> None:
        """Stop the engines (idempotent)."""


def build_rollout(cfg, *, groups, policy, preset, loader, tokenizer, scorer, steps: int) -> Rollout:
    """The run's rollout, from its config and preset (``steps``: the run's length); collective over the
    trainer's world."""
    from red_megatron.rollout.sampling import SamplingConfig

    online = preset.online
    guidance = None
    if getattr(preset, "guidance", False):
        from red_megatron.algo.guidance import GuidanceSchedule

        if cfg.rollout.placement != "colocated" or cfg.replay_experience_dir is not None:
            raise ValueError(f"algo.preset={cfg.algo.preset}: the guidance is built into the colocated rollout's "
                             f"prompts; rollout.placement={cfg.rollout.placement!r} / replay_experience_dir do not "
                             f"apply it (use rollout.placement=colocated)")
        guidance = GuidanceSchedule.from_run(cfg, steps)
    sampling = SamplingConfig.from_run(cfg, online=online, guidance=guidance)
    common = dict(groups=groups, loader=loader, sampling=sampling, with_offline=preset.with_offline,
                  tokenizer=tokenizer, scorer=scorer)
    if cfg.rollout.placement == "disaggregated" and online:
        if cfg.rollout.partial:
            from red_megatron.rollout.partial import PartialRollout as cls
        else:
            from red_megatron.rollout.disaggregated import DisaggregatedRollout as cls
        rollout: Rollout = cls(cfg, policy=policy, steps=steps, **common)
    else:
        from red_megatron.rollout.colocated import ColocatedRollout

        rollout = ColocatedRollout(cfg, policy=policy, **common)
        if cfg.replay_experience_dir is not None:
            from red_megatron.rollout.replay import ReplayedRollout

            rollout = ReplayedRollout(rollout, cfg.replay_experience_dir, groups=groups, loader=loader)
    if cfg.record_experience_dir is not None:
        from red_megatron.rollout.replay import RecordingRollout

        rollout = RecordingRollout(rollout, cfg.record_experience_dir, groups=groups)
    return rollout
