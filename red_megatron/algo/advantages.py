"""Group-relative advantages over all G+1 members of a group (RED_SPEC step 2).

    Â_i = (r_i − mean_g(r)) / (std_g(r) + 1e-6)      std unbiased (torch.std's default)
    Â_i =  r_i − mean_g(r)                            std_normalize=False (LUFFY, Dr.GRPO)

The offline trace is a member of its group like any other sample: its reward enters the
mean and std, and it receives its own Â (Â_sft in the paper's Eq. 10). Groups are found by
id, not by position, so the result is invariant to any reordering of the batch.
"""
from __future__ import annotations

import torch


def group_sum(values_B: torch.Tensor, group_id_B: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Σ over each group's members: [B] -> [num_groups]."""
    out = torch.zeros(num_groups, dtype=values_B.dtype, device=values_B.device)
    return out.index_add(0, group_id_B.long(), values_B)


def group_mean(values_B: torch.Tensor, group_id_B: torch.Tensor, num_groups: int) -> torch.Tensor:
    counts = torch.bincount(group_id_B.long(), minlength=num_groups).to(values_B.dtype)
    if bool((counts == 0).any()):
        raise ValueError(f"group {int(torch.nonzero(counts == 0)[0])} has no members")
    return group_sum(values_B, group_id_B, num_groups) / counts


def group_advantages(
    rewards_B: torch.Tensor,
    group_id_B: torch.Tensor,
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Â_B for every sample (online and offline alike); computed in float64, returned as float32.

    A group whose rewards are all equal has Â = 0 for all members (no signal), with or
    without std. With std_normalize, every group needs >= 2 members (unbiased std).
    """
    if rewards_B.dim() != 1 or group_id_B.shape != rewards_B.shape:
        raise ValueError(
            f"rewards_B and group_id_B must be 1-D of equal length; got {tuple(rewards_B.shape)}, {tuple(group_id_B.shape)}"
        )
    if not bool(torch.isfinite(rewards_B).all()):
        raise ValueError("rewards_B contains a non-finite reward")
    gid = group_id_B.long()
    num_groups = int(gid.max()) + 1
    r = rewards_B.double()
    counts = torch.bincount(gid, minlength=num_groups).double()
    mean_G = group_mean(r, gid, num_groups)
    centred_B = r - mean_G[gid]
    if not std_normalize:
        return centred_B.float()
    if bool((counts < 2).any()):
        g = int(torch.nonzero(counts < 2)[0])
        raise ValueError(
            f"group {g} has {int(counts[g])} member(s); the unbiased group std needs >= 2 "
            "(use G >= 2 online samples without an offline trace, or std_normalize=False)"
        )
    var_G = group_sum(centred_B * centred_B, gid, num_groups) / (counts - 1.0)
    std_G = var_G.sqrt()
    return (centred_B / (std_G[gid] + eps)).float()
