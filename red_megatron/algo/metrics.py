"""Per-step metrics of RED_SPEC.md that need only algo inputs (Figure 6 / Table 2 curves).

Grad norm and the rollout-vs-trainer log-prob gap are measured by the trainer; everything
else is here. Values are plain floats (lists for the r̄ histogram) ready for a logger.
For a DP batch these are per-rank values; the trainer reduces what it needs.
"""
from __future__ import annotations

import math

import torch

from red_megatron.algo.entropy import EntropyStats
from red_megatron.algo.loss import TokenLossOutput


def _mean_or_nan(x: torch.Tensor) -> float:
    return float(x.double().mean()) if x.numel() else math.nan


def rbar_histogram(rbar_G: torch.Tensor, num_bins: int) -> list[float]:
    """Counts of groups per r̄ bin over [0, 1]; with num_bins = G+1 each bin holds one k/G."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    idx = (rbar_G.double().clamp(0, 1) * (num_bins - 1)).round().long() if num_bins > 1 else torch.zeros_like(rbar_G, dtype=torch.long)
    return [float(c) for c in torch.bincount(idx, minlength=num_bins).tolist()]


def step_metrics(
    *,
    rewards_B: torch.Tensor,
    is_offline_B: torch.Tensor,
    response_len_B: torch.Tensor,
    rbar_G: torch.Tensor | None = None,
    entropy: EntropyStats | None = None,
    regulator_metrics: dict[str, float] | None = None,
    w: float | None = None,
    loss_out: TokenLossOutput | None = None,
    rbar_bins: int = 8,
) -> dict[str, float | list[float]]:
    on = ~is_offline_B
    m: dict[str, float | list[float]] = {
        "reward/online_accuracy": _mean_or_nan(rewards_B[on]),
        "reward/offline_accuracy": _mean_or_nan(rewards_B[is_offline_B]),
        "response/online_mean_length": _mean_or_nan(response_len_B[on]),
        "response/offline_mean_length": _mean_or_nan(response_len_B[is_offline_B]),
    }
    if entropy is not None:
        m["entropy/h_rl"] = entropy.h_rl
        m["entropy/h_sft"] = entropy.h_sft
    if regulator_metrics:
        m.update(regulator_metrics)
    if w is not None:
        m["red/w"] = float(w)
    if rbar_G is not None:
        m["red/rbar_mean"] = _mean_or_nan(rbar_G)
        m["red/rbar_hist"] = rbar_histogram(rbar_G, rbar_bins)
    if loss_out is not None:
        m["loss/total"] = float(loss_out.loss.detach())
        m["loss/policy"] = float(loss_out.policy_loss)
        m["loss/entropy"] = float(loss_out.entropy_loss)
        m["loss/kl"] = float(loss_out.kl_loss)
        m["loss/clip_frac"] = float(loss_out.clip_frac)
    return m
