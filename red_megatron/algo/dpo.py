"""Rollout DPO (Phi-4-Mini-Reasoning, arXiv 2504.21233) as one more per-token reduction of the contract.

Per prompt, the K online samples of the current policy are verified; one pair is built from the
first verified-correct and the first verified-wrong sample (samples are i.i.d., so "first" is a
random pick); a prompt without both is dropped and counted. With S the sequence-summed log-prob
of a response under the policy and R under the frozen reference (the policy at the stage's start):

    m_p = β · [(S_chosen − R_chosen) − (S_rejected − R_rejected)]
    L   = 1/P · Σ_p −log σ(m_p) = 1/P · Σ_p softplus(−m_p)                 (P: pairs of the global batch)

L is nonlinear in sequence sums, which a per-token kernel cannot form across micro-batches. But
one update per rollout batch means the update's forward reads the weights whose S the no-grad
pass already measured, so L's gradient there is exactly that of the linear per-token reduction

    Σ_t −weight_t · Â_t · logp_t,   Â = +β·σ(−m_p) on the chosen tokens, −β·σ(−m_p) on the rejected,
                                    weight = 1/P on paired samples, 0 on the others       (TokenKind.DPO)

(dL/dS_chosen = −β·σ(−m)/P, dL/dS_rejected = +β·σ(−m)/P). The loss value the update reports is
that surrogate's; L itself is logged from the pass's sums (``dpo/loss``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from red_megatron.algo.contract import TokenKind, TokenTerms, check_loss_scalar
from red_megatron.algo.groups import check_groups, per_token, sample_index_of_tokens


@dataclass(frozen=True)
class Pairs:
    chosen_P: torch.Tensor  # int64 sample index of each pair's verified-correct response
    rejected_P: torch.Tensor  # int64 sample index of each pair's verified-wrong response
    num_groups: int  # prompts in the batch
    dropped: int  # prompts without both a correct and a wrong sample (no pair)


def build_pairs(rewards_B: torch.Tensor, group_id_B: torch.Tensor, is_offline_B: torch.Tensor | None = None) -> Pairs:
    """One (correct, wrong) pair per prompt from its online samples, in sample order; reward 1 is correct,
    0 wrong (the verifier's 0/1; anything else is refused)."""
    B = group_id_B.numel()
    if rewards_B.shape != (B,):
        raise ValueError(f"rewards_B has shape {tuple(rewards_B.shape)}; expected ({B},) like group_id_B")
    if bool(((rewards_B != 0) & (rewards_B != 1)).any()):
        raise ValueError("rewards_B: Rollout DPO pairs need verified 0/1 rewards")
    off = torch.zeros(B, dtype=torch.bool) if is_offline_B is None else is_offline_B
    check_groups(group_id_B, off)
    gid = group_id_B.long().tolist()
    first: dict[tuple[int, bool], int] = {}
    for i, (g, r, o) in enumerate(zip(gid, rewards_B.tolist(), off.tolist())):
        if not o:
            first.setdefault((g, r == 1), i)
    n_groups = max(gid) + 1 if gid else 0
    chosen, rejected = [], []
    for g in range(n_groups):
        if (g, True) in first and (g, False) in first:
            chosen.append(first[(g, True)])
            rejected.append(first[(g, False)])
    as_idx = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return Pairs(chosen_P=as_idx(chosen), rejected_P=as_idx(rejected), num_groups=n_groups,
                 dropped=n_groups - len(chosen))


def sequence_logp(logp_N: torch.Tensor, response_len_B: torch.Tensor) -> torch.Tensor:
    """S_B: the sum of each sample's response-token log-probs (N order, sample by sample)."""
    lens = response_len_B.long()
    if int(lens.sum()) != logp_N.shape[0]:
        raise ValueError(f"logp_N has {logp_N.shape[0]} tokens; the responses have {int(lens.sum())}")
    idx = sample_index_of_tokens(lens).to(logp_N.device)
    return torch.zeros(lens.numel(), dtype=logp_N.dtype, device=logp_N.device).index_add(0, idx, logp_N)


def dpo_margins(seq_logp_B: torch.Tensor, ref_seq_logp_B: torch.Tensor, pairs: Pairs, beta: float) -> torch.Tensor:
    """m_P = β·[(S_c − R_c) − (S_r − R_r)] (differentiable in seq_logp_B)."""
    c, r = pairs.chosen_P.to(seq_logp_B.device), pairs.rejected_P.to(seq_logp_B.device)
    ref = ref_seq_logp_B.to(seq_logp_B.dtype)
    return beta * ((seq_logp_B[c] - ref[c]) - (seq_logp_B[r] - ref[r]))


def dpo_loss(logp_N: torch.Tensor, ref_logp_N: torch.Tensor, response_len_B: torch.Tensor, pairs: Pairs, *,
             beta: float, num_pairs: int | None = None) -> torch.Tensor:
    """L = 1/P·Σ_p softplus(−m_p), P = num_pairs (the global count; this batch's pairs if None).
    Exact value and autograd gradient w.r.t. logp_N: what the per-token reduction reproduces."""
    m = dpo_margins(sequence_logp(logp_N, response_len_B), sequence_logp(ref_logp_N, response_len_B), pairs, beta)
    P = m.numel() if num_pairs is None else int(num_pairs)
    return F.softplus(-m).sum() / max(P, 1)


def dpo_token_terms(*, logp_N: torch.Tensor, ref_logp_N: torch.Tensor, response_len_B: torch.Tensor,
                    pairs: Pairs, beta: float, num_pairs: int | None = None) -> tuple[TokenTerms, dict[str, float]]:
    """The contract's bundle (kind DPO, Â the sequence coefficient, weight 1/P on paired samples) and the
    step's DPO metrics, from the no-grad pass's log-probs of the policy and of the reference."""
    check_loss_scalar("dpo_beta", beta, where="dpo_token_terms")
    lens = response_len_B.long()
    B = lens.numel()
    P = pairs.chosen_P.numel() if num_pairs is None else int(num_pairs)
    if P < pairs.chosen_P.numel():
        raise ValueError(f"num_pairs={P} is fewer than this batch's {pairs.chosen_P.numel()} pairs")
    with torch.no_grad():
        S = sequence_logp(logp_N.detach().double().cpu(), lens)
        R = sequence_logp(ref_logp_N.detach().double().cpu(), lens)
        m = dpo_margins(S, R, pairs, beta)
        coef_P = beta * torch.sigmoid(-m)
    adv_B = torch.zeros(B, dtype=torch.float64)
    adv_B[pairs.chosen_P] = coef_P
    adv_B[pairs.rejected_P] = -coef_P
    weight_B = torch.zeros(B, dtype=torch.float64)
    weight_B[torch.cat([pairs.chosen_P, pairs.rejected_P])] = 1.0 / max(P, 1)
    terms = TokenTerms(
        kind_N=per_token(torch.full((B,), int(TokenKind.DPO), dtype=torch.int32), lens),
        adv_N=per_token(adv_B.float(), lens), rbar_N=torch.zeros(int(lens.sum())),
        w_N=torch.ones(int(lens.sum())), weight_N=per_token(weight_B.float(), lens),
        sample_idx_N=sample_index_of_tokens(lens), is_offline_N=torch.zeros(int(lens.sum()), dtype=torch.bool))
    n = m.numel()
    metrics = {"dpo/pairs": float(n), "dpo/prompts_dropped": float(pairs.dropped),
               "dpo/loss": float(F.softplus(-m).mean()) if n else 0.0,
               "dpo/margin": float(m.mean()) if n else 0.0,
               "dpo/reward_accuracy": float((m > 0).double().mean()) if n else 0.0}
    return terms, metrics
