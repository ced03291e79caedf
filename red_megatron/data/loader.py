"""Epoch order, DP sharding and a resumable position over a :class:`RedDataset`.

The global batch of step s in epoch e is a fixed function of (seed, e, s): rows
``perm_e[s*B:(s+1)*B]`` of a permutation drawn from ``numpy.random.default_rng([seed, e])``.
DP rank r takes the r-th contiguous slice of B/world rows, so the global batch (and hence
the run) does not depend on how many ranks share it. Epochs drop the last partial batch to
keep the batch shape constant. The position is two integers, so a resumed run sees exactly
the batches the uninterrupted run would have.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from red_megatron.data.dataset import DataConfig, Example, RedDataset


class PromptLoader:
    def __init__(self, dataset: RedDataset, cfg: DataConfig, *, dp_rank: int = 0, dp_world_size: int = 1):
        if dp_world_size < 1 or not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"PromptLoader: dp_rank must be in [0, {dp_world_size}) and dp_world_size >= 1, "
                             f"got dp_rank={dp_rank}, dp_world_size={dp_world_size}")
        if cfg.global_batch_size % dp_world_size != 0:
            raise ValueError(f"DataConfig.global_batch_size={cfg.global_batch_size} must be divisible by the "
                             f"data-parallel size {dp_world_size}")
        if len(dataset) < cfg.global_batch_size:
            raise ValueError(f"DataConfig.global_batch_size={cfg.global_batch_size} is larger than the dataset "
                             f"({len(dataset)} prompts after drops)")
        self.dataset = dataset
        self.global_batch_size = cfg.global_batch_size
        self.local_batch_size = cfg.global_batch_size // dp_world_size
        self.seed = cfg.seed
        self.shuffle = cfg.shuffle
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.steps_per_epoch = len(dataset) // cfg.global_batch_size
        self.epoch = 0
        self.step_in_epoch = 0
        self.traces_truncated = 0  # over this rank's examples so far
        self.traces_seen = 0
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = len(self.dataset)
            self._perm = (np.random.default_rng([self.seed, epoch]).permutation(n)
                          if self.shuffle else np.arange(n))
            self._perm_epoch = epoch
        return self._perm

    def global_indices(self, epoch: int, step: int) -> list[int]:
        """Dataset indices of the whole global batch at (epoch, step): the same on every rank."""
        perm = self._permutation(epoch)
        b = self.global_batch_size
        return perm[step * b:(step + 1) * b].tolist()

    def next_batch(self) -> list[Example]:
        """This rank's slice of the next global batch; advances the position."""
        idx = self.global_indices(self.epoch, self.step_in_epoch)
        lo = self.dp_rank * self.local_batch_size
        batch = [self.dataset[i] for i in idx[lo:lo + self.local_batch_size]]
        for ex in batch:
            if ex.trace_ids is not None:
                self.traces_seen += 1
                self.traces_truncated += int(ex.trace_truncated)
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        return batch

    def __iter__(self) -> Iterator[list[Example]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.seed,
                "shuffle": self.shuffle, "num_examples": len(self.dataset),
                "global_batch_size": self.global_batch_size,
                "traces_truncated": self.traces_truncated, "traces_seen": self.traces_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the position; refuses a state from different data or a different order."""
        for key, mine in (("seed", self.seed), ("shuffle", self.shuffle),
                          ("num_examples", len(self.dataset)), ("global_batch_size", self.global_batch_size)):
            if state.get(key) != mine:
                raise ValueError(f"PromptLoader.load_state_dict: saved {key}={state.get(key)!r} but this loader "
                                 f"has {key}={mine!r}; the data position cannot be resumed")
        if not 0 <= state["step_in_epoch"] < self.steps_per_epoch or state["epoch"] < 0:
            raise ValueError(f"PromptLoader.load_state_dict: position epoch={state['epoch']}, "
                             f"step_in_epoch={state['step_in_epoch']} is outside [0, {self.steps_per_epoch})")
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.traces_truncated = int(state.get("traces_truncated", 0))
        self.traces_seen = int(state.get("traces_seen", 0))
