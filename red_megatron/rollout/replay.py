"""Recorded experience: one run writes what its rollout handed out, another trains on it.

The layout tier uses this to compare a parallel layout with the 1-process run on the same
rollouts (sampling noise kept out): the 1-process run records every step's global experience
(:class:`RecordingRollout`, every replica's part in DP order), the layout replays it
(:class:`ReplayedRollout`, this replica's slice, at any DP size). The replayed run still draws its
prompts (so its loader state, and so its checkpoints, are a real run's) and still refits its
engines after every update; only the samples come from the recording.
"""
from __future__ import annotations

from pathlib import Path

import torch

from red_megatron.experience import Experience, merge_experience
from red_megatron.rollout.interface import Rollout


def _step_file(directory, step: int) -> Path:
    return Path(directory) / f"step{step + 1:06d}.pt"


class _Wrapper(Rollout):
    def __init__(self, inner: Rollout):
        self.inner = inner
        self.timeline = inner.timeline

    @property
    def local_engine(self):
        return self.inner.local_engine

    def refit(self, stream, version: int, step: int) -> dict:
        return self.inner.refit(stream, version, step)

    def loader_state(self, step: int) -> dict:
        return self.inner.loader_state(step)

    def resume(self, step: int, loader_state: dict) -> None:
        self.inner.resume(step, loader_state)

    def step_metrics(self, since: float) -> dict:
        return self.inner.step_metrics(since)

    def finish(self) -> None:
        self.inner.finish()

    def close(self, run_dir=None) -> None:
        self.inner.close(run_dir)


class ReplayedRollout(_Wrapper):
    """Batch ``step``'s recorded experience, this replica's slice (the recording may be of any DP size)."""

    def __init__(self, inner: Rollout, directory, *, groups, loader):
        super().__init__(inner)
        self.directory, self.g, self.loader = directory, groups, loader

    def take(self, step: int) -> Experience:
        self.loader.next_batch()  # the prompts a live run would have drawn: the checkpoint's loader state
        path = _step_file(self.directory, step)
        if not path.is_file():
            raise FileNotFoundError(f"replay_experience_dir: no recorded experience for step {step + 1} ({path})")
        whole = merge_experience(torch.load(path, weights_only=False))
        per = whole.num_prompts // self.g.dp_size
        return whole.split([per] * self.g.dp_size, [0] * self.g.dp_size)[self.g.dp_rank]


class RecordingRollout(_Wrapper):
    """Rank 0 writes every step's global experience (every replica's part, in DP order)."""

    def __init__(self, inner: Rollout, directory, *, groups):
        super().__init__(inner)
        self.directory, self.g = Path(directory), groups

    def take(self, step: int) -> Experience:
        exp = self.inner.take(step)
        parts = [exp]
        if self.g.dp_size > 1:
            parts = [None] * self.g.dp_size
            torch.distributed.all_gather_object(parts, exp, group=self.g.dp_group)
        if self.g.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save(parts, _step_file(self.directory, step))
        return exp
