"""Accuracy-aware policy shift (RED part II; RED_SPEC step 5) and the presets' alternatives.

The offline trace was not sampled from π_θ, so its importance ratio needs a stand-in for the
behaviour policy π_offline. RED interpolates it by the group's online accuracy r̄:

    π_offline = sg(π) + (1 − sg(π)) · r̄          r^offline_t = π / π_offline   (unclipped)

    r̄ → 0 (the policy fails this prompt):   r^offline = π/sg(π): value 1, gradient ∇log π
                                             — plain imitation of the trace (SFT / NLL).
    r̄ → 1 (the policy already solves it):   r^offline = π: gradient ∇π = π∇log π
                                             — tokens the policy finds unlikely barely move it.

The same form covers two table rows exactly: π_offline = 1 (``mixpolicy``) is r̄ = 1 and
π_offline = π (``onpolicy_offline``) is r̄ = 0, which is why the kernel has one OFFLINE_SHIFT
kind driven by a per-token r̄. LUFFY instead shapes the probability: f(π) = π / (π + γ).

All ratio functions take per-token log-probs with grad (logp_N) and return per-token ratios.
"""
from __future__ import annotations

import torch

from red_megatron.algo.advantages import group_mean
from red_megatron.algo.contract import DEFAULT_PARAMS


def group_accuracy(
    rewards_B: torch.Tensor,
    group_id_B: torch.Tensor,
    is_offline_B: torch.Tensor,
    *,
    include_offline: bool = False,
) -> torch.Tensor:
    """r̄_G: mean reward of each group's online samples (include_offline: all G+1 members).

    With include_offline=False every group needs >= 1 online sample.
    """
    gid = group_id_B.long()
    num_groups = int(gid.max()) + 1
    if include_offline:
        return group_mean(rewards_B.double(), gid, num_groups).float()
    online = ~is_offline_B
    n_on = torch.bincount(gid[online], minlength=num_groups)
    if bool((n_on == 0).any()):
        g = int(torch.nonzero(n_on == 0)[0])
        raise ValueError(f"group {g} has no online sample, so its online accuracy r̄ is undefined")
    total = torch.zeros(num_groups, dtype=torch.float64).index_add(0, gid[online], rewards_B.double()[online])
    return (total / n_on.double()).float()


def shift_ratio(logp_N: torch.Tensor, rbar_N: torch.Tensor) -> torch.Tensor:
    """r^offline = π / (sg(π) + (1 − sg(π))·r̄), the accuracy-aware policy shift (the one definition).

    Evaluated as exp(logp − sg(log π_offline)) with log π_offline = logaddexp(logp, log1p(−π) + log r̄):
    at r̄ = 0 the second term is −inf and the denominator's log is exactly sg(logp), so a token whose
    π underflows to 0 still gets ratio 1 (not 0/0); nothing is divided.
    """
    logp_sg = logp_N.detach()
    log_pi_offline = torch.logaddexp(logp_sg, torch.log1p(-logp_sg.exp()) + torch.log(rbar_N.to(logp_N.dtype)))
    return torch.exp(logp_N - log_pi_offline)


def mixpolicy_ratio(logp_N: torch.Tensor) -> torch.Tensor:
    """π_offline = 1: r^offline = π (the ``mixpolicy`` row; shift_ratio at r̄ = 1)."""
    return logp_N.exp()


def onpolicy_ratio(logp_N: torch.Tensor) -> torch.Tensor:
    """π_offline = π: r^offline = π/sg(π) = 1 with gradient ∇log π (shift_ratio at r̄ = 0)."""
    return (logp_N - logp_N.detach()).exp()


def luffy_ratio(logp_N: torch.Tensor, gamma: float = DEFAULT_PARAMS.luffy_gamma) -> torch.Tensor:
    """LUFFY's policy shaping f(π) = π / (π + γ) = sigmoid(logp − log γ): boosts the gradient of
    low-probability tokens (the sigmoid form never divides, so π = 0 gives 0, not 0/0)."""
    if not gamma > 0:
        raise ValueError(f"luffy gamma must be > 0, got {gamma}")
    return torch.sigmoid(logp_N - torch.log(torch.tensor(gamma, dtype=logp_N.dtype)))
