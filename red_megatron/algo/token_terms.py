"""Per-sample quantities -> the per-token tensors of the algo/kernel contract.

This is where the two halves meet (docs/KERNEL_CONTRACT.md; the types are contract.py). Every tensor is 1-D over
the N response tokens, flattened sample by sample in batch order:

    kind_N    int32  0 ONLINE, 1 OFFLINE_SHIFT, 2 OFFLINE_LUFFY, 3 NLL   (TokenKind)
    adv_N     fp32   Â of the token's sample
    rbar_N    fp32   r̄ of the token's group (OFFLINE_SHIFT only; 0 elsewhere)
    w_N       fp32   RED's offline weight w on offline tokens, 1 on online tokens
    weight_N  fp32   the aggregation weight, every normaliser folded in:
                       sequence_mean  1 / (|o_i| · group_size · num_prompts)       (Eq. 10)
                       token_mean     1 / total_tokens                             (DAPO)
                       constant       1 / (C · group_size · num_prompts)           (Dr.GRPO)
                     With group_size = G+1 and all |o_i| = C, constant equals sequence_mean.

The loss the kernel (and ``loss.red_token_loss``) computes from them is
    L = −Σ_t weight_t · w_t · term_t  (− entropy and + KL terms, see loss.py).

Distributed callers: pass the *global* num_prompts (sequence_mean, constant) or the global
total_tokens (token_mean), divided by nothing else; then summing the local losses over DP
ranks (as gradient all-reduce-sum does) gives the global mean. Leave them None for a
single-process batch. group_size None means "each sample's group as counted in this batch",
which needs whole groups on a rank; pass G+1 explicitly otherwise.
"""
from __future__ import annotations

from typing import Literal

import torch

from red_megatron.algo.contract import TokenKind, TokenTerms
from red_megatron.algo.groups import check_groups, per_token, sample_index_of_tokens

Aggregation = Literal["sequence_mean", "token_mean", "constant"]
AGGREGATIONS: tuple[str, ...] = ("sequence_mean", "token_mean", "constant")


def aggregation_weights(
    response_len_B: torch.Tensor,
    group_id_B: torch.Tensor,
    *,
    aggregation: Aggregation,
    num_prompts: int | None = None,
    group_size: int | None = None,
    total_tokens: int | None = None,
    loss_constant: float | None = None,
) -> torch.Tensor:
    """weight_B: the aggregation weight of each token of sample i (one value per sample)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}; expected one of {AGGREGATIONS}")
    length_B = response_len_B.double()
    if bool((response_len_B < 1).any()):
        i = int(torch.nonzero(response_len_B < 1)[0])
        raise ValueError(f"sample {i} has response length {int(response_len_B[i])}; every response needs >= 1 token")
    if aggregation == "token_mean":
        total = int(response_len_B.sum()) if total_tokens is None else int(total_tokens)
        if total < 1:
            raise ValueError(f"total_tokens must be >= 1, got {total}")
        return torch.full_like(length_B, 1.0 / total).float()
    gid = group_id_B.long()
    n_groups = int(gid.max()) + 1
    prompts = n_groups if num_prompts is None else int(num_prompts)
    if prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {prompts}")
    if group_size is None:
        size_B = torch.bincount(gid, minlength=n_groups).double()[gid]
    else:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        size_B = torch.full_like(length_B, float(group_size))
    if aggregation == "sequence_mean":
        return (1.0 / (length_B * size_B * prompts)).float()
    if loss_constant is None or not loss_constant > 0:
        raise ValueError(f"aggregation='constant' needs loss_constant > 0, got {loss_constant}")
    return (1.0 / (float(loss_constant) * size_B * prompts)).float()


def build_token_terms(
    *,
    adv_B: torch.Tensor,
    is_offline_B: torch.Tensor,
    group_id_B: torch.Tensor,
    response_len_B: torch.Tensor,
    offline_kind: TokenKind | None,
    online_kind: TokenKind | None = TokenKind.ONLINE,
    rbar_G: torch.Tensor | None = None,
    w: float = 1.0,
    aggregation: Aggregation = "sequence_mean",
    num_prompts: int | None = None,
    group_size: int | None = None,
    total_tokens: int | None = None,
    loss_constant: float | None = None,
) -> TokenTerms:
    """Per-sample data -> TokenTerms. offline_kind / online_kind None: no such samples allowed.

    rbar_G (one r̄ per group) is required when offline_kind is OFFLINE_SHIFT; the presets
    pass all-ones (π_offline = 1), all-zeros (π_offline = π) or the group accuracy.
    """
    check_groups(group_id_B, is_offline_B)
    B = group_id_B.numel()
    for name, t in (("adv_B", adv_B), ("response_len_B", response_len_B)):
        if t.shape != (B,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected ({B},) like group_id_B")
    n_off = int(is_offline_B.sum())
    if offline_kind is None and n_off:
        raise ValueError(f"{n_off} offline sample(s) in the batch but this preset has no offline term")
    if online_kind is None and n_off < B:
        raise ValueError(f"{B - n_off} online sample(s) in the batch but this preset has no online term")
    if not w >= 0 or w != w:
        raise ValueError(f"offline weight w must be >= 0, got {w}")
    gid = group_id_B.long()
    # Per-sample kind/r̄/w, then broadcast to tokens: offline-ness comes from the flag only.
    kind_B = torch.full((B,), -1, dtype=torch.int32)
    if online_kind is not None:
        kind_B[~is_offline_B] = int(online_kind)
    if offline_kind is not None:
        kind_B[is_offline_B] = int(offline_kind)
    rbar_B = torch.zeros(B, dtype=torch.float32)
    if offline_kind == TokenKind.OFFLINE_SHIFT:
        if rbar_G is None:
            raise ValueError("offline_kind=OFFLINE_SHIFT needs rbar_G (one r̄ per group)")
        if rbar_G.shape != (int(gid.max()) + 1,):
            raise ValueError(f"rbar_G has shape {tuple(rbar_G.shape)}; expected ({int(gid.max()) + 1},), one per group")
        if bool(((rbar_G < 0) | (rbar_G > 1)).any()):
            raise ValueError("rbar_G must lie in [0, 1] (it is an accuracy)")
        rbar_B = torch.where(is_offline_B, rbar_G.float()[gid], rbar_B)
    w_B = torch.where(is_offline_B, torch.tensor(float(w)), torch.tensor(1.0))
    weight_B = aggregation_weights(
        response_len_B, gid, aggregation=aggregation, num_prompts=num_prompts,
        group_size=group_size, total_tokens=total_tokens, loss_constant=loss_constant,
    )
    lens = response_len_B.long()
    return TokenTerms(
        kind_N=per_token(kind_B, lens),
        adv_N=per_token(adv_B.float(), lens),
        rbar_N=per_token(rbar_B, lens),
        w_N=per_token(w_B.float(), lens),
        weight_N=per_token(weight_B, lens),
        sample_idx_N=sample_index_of_tokens(lens),
        is_offline_N=per_token(is_offline_B, lens),
    )
