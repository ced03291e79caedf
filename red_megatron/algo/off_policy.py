"""Off-policy correction for rollouts sampled by another policy than the one being updated (docs/ASYNC.md).

Three policies meet in an asynchronous (or numerically mismatched) step:

    π_behaviour   the engine that sampled the tokens (its log-probs come back with the samples)
    π_old         the trainer's weights before this update (its recomputed log-probs: logp_old_N)
    π_θ           the weights being updated

Decoupled PPO (the proximal policy is π_old): the clipped ratio r = π_θ / π_old is unchanged, and
every online token's term is multiplied by a truncated importance weight (TIS)

    ρ_t = min(π_old(y_t) / π_behaviour(y_t), C)                                  (C: ``cap``, default 2)

optionally with whole samples masked (ρ = 0 on all their tokens) when their geometric-mean ratio
exp(mean_t log(π_old/π_behaviour)) leaves [1/bound, bound]. Offline traces have no behaviour policy:
ρ = 1. ρ enters the contract as ``TokenTerms.is_weight_N`` (``TokenTerms.with_is_weight``).

k3 estimates KL(π_behaviour ‖ π_old) from the behaviour's own samples: E[(q − 1) − log q], q = π_old/π_b.

An online token whose behaviour log-prob is not finite (NaN, ±inf from a broken engine) has no
ratio: its ρ is 0, it is left out of every statistic, and it is counted (``sums[5]``);
:func:`check_nonfinite_behaviour` refuses the step when that count passes a fraction of the
online tokens, so the tokens are never dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from red_megatron.algo.contract import check_loss_scalar


@dataclass(frozen=True)
class OffPolicyWeights:
    is_weight_N: torch.Tensor  # fp32 ρ per token (1 on offline tokens, 0 on masked samples' tokens)
    sample_masked_B: torch.Tensor  # bool: the sample's tokens were masked
    # sums for metrics over a distributed batch (reduce them, then off_policy_metrics): online tokens,
    # Σρ, truncated tokens, masked samples, Σk3, non-finite behaviour log-probs (online tokens with
    # none: not in the other sums), and the largest untruncated ratio (reduce with max)
    sums: torch.Tensor  # float64 [6]
    max_ratio: float
    max_weight: float  # the largest ρ (<= cap)


def truncated_is_weights(logp_old_N: torch.Tensor, logp_behaviour_N: torch.Tensor, is_offline_N: torch.Tensor,
                         sample_idx_N: torch.Tensor, num_samples: int, *, cap: float = 2.0,
                         mask_bound: float | None = None) -> OffPolicyWeights:
    """ρ_t = min(exp(logp_old − logp_behaviour), cap) on online tokens; see the module docstring."""
    check_loss_scalar("tis_cap", cap, where="truncated_is_weights")  # the contract's range, as AlgoConfig's
    check_loss_scalar("tis_mask_bound", mask_bound, where="truncated_is_weights", optional=True)
    n = logp_old_N.shape[0]
    for name, t in (("logp_behaviour_N", logp_behaviour_N), ("is_offline_N", is_offline_N),
                    ("sample_idx_N", sample_idx_N)):
        if t.shape != (n,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({n},) like logp_old_N")
    online_all = ~is_offline_N.bool()
    nonfinite = online_all & ~torch.isfinite(logp_behaviour_N)
    online = online_all & ~nonfinite  # the tokens with a ratio; the others get ρ = 0 below
    log_q = torch.where(online, logp_old_N.double() - logp_behaviour_N.double(), torch.zeros((), dtype=torch.float64))
    q = torch.exp(log_q)
    rho = torch.clamp(q, max=float(cap))
    truncated = online & (q > cap)
    idx = sample_idx_N.long()
    masked_B = torch.zeros(num_samples, dtype=torch.bool)
    if mask_bound is not None:
        tokens_B = torch.zeros(num_samples, dtype=torch.float64).index_add_(0, idx, online.double())
        sum_B = torch.zeros(num_samples, dtype=torch.float64).index_add_(0, idx, log_q)
        mean_B = sum_B / tokens_B.clamp(min=1.0)
        masked_B = (tokens_B > 0) & (mean_B.abs() > torch.log(torch.tensor(float(mask_bound), dtype=torch.float64)))
        rho = torch.where(masked_B[idx], torch.zeros((), dtype=torch.float64), rho)
    rho = torch.where(online, rho, torch.ones((), dtype=torch.float64))
    rho = torch.where(nonfinite, torch.zeros((), dtype=torch.float64), rho)
    k3 = torch.where(online, (q - 1.0) - log_q, torch.zeros((), dtype=torch.float64))
    n_online = float(online.sum())
    sums = torch.tensor([n_online, float(rho[online].sum()), float(truncated.sum()), float(masked_B.sum()),
                         float(k3.sum()), float(nonfinite.sum())], dtype=torch.float64)
    max_ratio = float(q[online].max()) if n_online else 1.0
    max_weight = float(rho[online].max()) if n_online else 1.0
    return OffPolicyWeights(is_weight_N=rho.float(), sample_masked_B=masked_B, sums=sums, max_ratio=max_ratio,
                            max_weight=max_weight)


def off_policy_metrics(sums: torch.Tensor, max_ratio: float, max_weight: float) -> dict[str, float]:
    """The step's off-policy curves from (globally reduced) :attr:`OffPolicyWeights.sums`."""
    n = max(float(sums[0]), 1.0)
    return {"offpolicy/is_weight_mean": float(sums[1]) / n, "offpolicy/is_weight_max": float(max_weight),
            "offpolicy/ratio_max": float(max_ratio),
            "offpolicy/truncated_fraction": float(sums[2]) / n, "offpolicy/masked_samples": float(sums[3]),
            "offpolicy/kl_k3_behaviour_old": float(sums[4]) / n,
            "offpolicy/nonfinite_behaviour_tokens": float(sums[5])}


def check_nonfinite_behaviour(sums: torch.Tensor, max_fraction: float, step: int) -> None:
    """Refuse a step whose (globally reduced) non-finite behaviour log-probs pass ``max_fraction`` of
    its online tokens (``algo.tis_max_nonfinite``); below it they count in the metrics, with ρ = 0."""
    bad, n = float(sums[5]), float(sums[0]) + float(sums[5])
    if bad and bad > max_fraction * n:
        raise ValueError(f"non-finite behaviour log-probs in step {step}: {bad:.0f} of {n:.0f} online tokens "
                         f"({100 * bad / n:.3g}%), above algo.tis_max_nonfinite={max_fraction}: expected the "
                         f"engine to return finite log-probs for the tokens it sampled")


def stale_tokens(token_versions: list, response_lens: list[int], *, oldest: int) -> torch.Tensor:
    """bool [N]: tokens produced by a policy version below ``oldest`` (step − k), in the samples' token order.
    ``token_versions[b]``: sample b's per-token versions, or None (a trace, or a sample of one version that the
    rollout already bounds): never stale. Partial rollouts with ``rollout.stale_samples='mask'`` train such
    tokens with weight 0 instead of regenerating their sample (docs/ASYNC.md §7)."""
    parts = []
    for versions, n in zip(token_versions, response_lens, strict=True):
        if versions is None:
            parts.append(torch.zeros(n, dtype=torch.bool))
        else:
            if len(versions) != n:
                raise ValueError(f"stale_tokens: a sample has {n} tokens and {len(versions)} versions")
            parts.append(torch.tensor(versions, dtype=torch.int64) < oldest)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
