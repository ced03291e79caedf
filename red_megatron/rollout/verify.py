"""Refit verifier: do the engine and the trainer assign the same log-probs to the same tokens?

After a refit the engine must hold exactly the trainer's weights. The cheapest end-to-end check is
to score fixed sequences with both and compare per-token log-probs: a wrong shard, a missed tensor
or a stale prefix cache shows up as a gap far above numerical noise (fp32: ~1e-5; bf16: ~1e-2).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def logprob_gap(engine_logprobs: Sequence[Sequence[float]], trainer_logprobs: Sequence) -> tuple[float, float]:
    """Max and mean |a - b| over all tokens of aligned per-sequence log-prob lists."""
    diffs = []
    for i, (a, b) in enumerate(zip(engine_logprobs, trainer_logprobs, strict=True)):
        a_T = torch.as_tensor(a, dtype=torch.float64)
        b_T = torch.as_tensor(b, dtype=torch.float64).detach().cpu().reshape(-1)
        if a_T.shape != b_T.shape:
            raise ValueError(f"logprob_gap: sequence {i} has {a_T.numel()} engine log-probs but "
                             f"{b_T.numel()} trainer log-probs")
        diffs.append((a_T - b_T).abs())
    if not diffs:
        raise ValueError("logprob_gap: no sequences")
    d = torch.cat(diffs)
    return float(d.max()), float(d.mean())


def verify_refit(engine, sequences: Sequence[Sequence[int]], trainer_logprobs: Sequence) -> tuple[float, float]:
    """(max_gap, mean_gap) between the engine's and the trainer's log-probs of ``sequences``.

    ``trainer_logprobs[i][t-1]`` = log p(sequences[i][t] | sequences[i][:t]) for t = 1..len-1, at
    temperature 1 (what vLLM's prompt log-probs are).
    """
    return logprob_gap(engine.score(sequences), trainer_logprobs)
