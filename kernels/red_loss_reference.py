"""Pure-PyTorch reference of the RED per-token loss (the algo -> kernel contract).

Plain autograd, written to be obviously right rather than fast: it materialises the full-vocabulary
fp32 (or float64) log-softmax. It is the one reference shared by the kernel's tests and benchmark.

Math (.notes/KERNEL_CONTRACT.md), z = logits / temperature over the real vocabulary
(global ids >= vocab_size are padding and dropped), logp = log_softmax(z)[target],
H = -Σ p log p, π = exp(logp):
  L = - Σ_t weight_t · w_t · term_t - entropy_coef · Σ_t weight_t · H_t
      + kl_coef · Σ_t weight_t · k3(ref_logp_t, logp_t)
with term per kind: ONLINE min(r·A, clip(r)·A), OFFLINE_SHIFT r_off·A, OFFLINE_LUFFY f(π)·A, NLL logp.

Two formulations are chosen for robustness only (same values as the textbook forms wherever the
textbook forms are finite):
  r_off = π / (sg(π) + (1 - sg(π))·rbar) = exp(logp - sg(log(π + (1 - π)·rbar))), the log evaluated
          as logaddexp(logp, log1p(-π) + log rbar), so an underflowed π with rbar = 0 gives 1, not 0/0;
  f(π)  = π / (π + gamma) = sigmoid(logp - log gamma).
Tokens with weight <= 0 (0 = padding) are excluded with `where` on both the value and the log-prob, so a huge ratio on
a padding token can neither reach the loss nor turn its zero gradient into NaN (0·inf).

Tensor parallelism: each rank holds a vocab shard; the shards are all-gathered (same V_local on
every rank, as Megatron pads), the rank's own shard is put back as the live autograd tensor, and
every rank computes the full loss redundantly, so autograd gives each rank exactly its shard's
gradient of the (identical) global loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from kernels._common import NLL, OFFLINE_LUFFY, OFFLINE_SHIFT, ONLINE, RedLossOutput, check_inputs

__all__ = ["red_loss_reference", "logprob_entropy", "RedLossOutput"]


def _group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _full_vocab_z(logits_NV: torch.Tensor, *, vocab_start: int, vocab_size: int, temperature: float,
                  group) -> tuple[torch.Tensor, int]:
    """[N, vocab_size] logits/temperature in fp32 (float64 if given float64) over the whole real
    vocabulary, and the global vocab offset of column 0 (0 with TP, vocab_start without)."""
    cdtype = torch.float64 if logits_NV.dtype == torch.float64 else torch.float32
    x = logits_NV.to(cdtype)
    tp = _group_size(group)
    if tp > 1:
        shards = [torch.empty_like(x) for _ in range(tp)]
        dist.all_gather(shards, x.detach().contiguous(), group=group)
        rank = dist.get_rank(group)
        if vocab_start != rank * x.shape[1]:
            raise ValueError(f"vocab_start: rank {rank} with V_local={x.shape[1]} must start at "
                             f"{rank * x.shape[1]}, got {vocab_start}")
        shards[rank] = x  # the live shard: autograd flows back to this rank's logits only
        x = torch.cat(shards, dim=1)
        offset = 0
    else:
        offset = vocab_start
    # Padding columns (global id >= vocab_size) are at the end of the global vocabulary: drop them.
    n_real = max(0, min(x.shape[1], vocab_size - offset))
    return x[:, :n_real] / temperature, offset


def logprob_entropy(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
                    temperature: float, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_N, entropy_N) without grad, fp32 (float64 for float64 logits): old-policy pass."""
    check_inputs(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size, temperature=temperature)
    with torch.no_grad():
        z, offset = _full_vocab_z(logits_NV, vocab_start=vocab_start, vocab_size=vocab_size,
                                  temperature=temperature, group=group)
        logp_all = torch.log_softmax(z, dim=-1)
        logp = logp_all.gather(1, (target_N.long() - offset).unsqueeze(1)).squeeze(1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def red_loss_reference(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
                       temperature: float, kind_N: torch.Tensor, adv_N: torch.Tensor, logp_old_N: torch.Tensor,
                       rbar_N: torch.Tensor, w_N: torch.Tensor, weight_N: torch.Tensor, eps_lo: float = 0.2,
                       eps_hi: float = 0.2, luffy_gamma: float = 0.1, entropy_coef: float = 0.0,
                       kl_coef: float = 0.0, ref_logp_N: Optional[torch.Tensor] = None, group=None,
                       grad_in_forward: bool = False) -> RedLossOutput:
    """Reference of `kernels.red_loss.red_loss` (same signature; grad_in_forward is accepted and
    ignored: plain autograd has no such memory trick)."""
    del grad_in_forward
    check_inputs(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size, temperature=temperature,
                 per_token=dict(kind_N=kind_N, adv_N=adv_N, logp_old_N=logp_old_N, rbar_N=rbar_N, w_N=w_N,
                                weight_N=weight_N, ref_logp_N=ref_logp_N),
                 eps_lo=eps_lo, eps_hi=eps_hi, luffy_gamma=luffy_gamma, kl_coef=kl_coef)
    z, offset = _full_vocab_z(logits_NV, vocab_start=vocab_start, vocab_size=vocab_size,
                              temperature=temperature, group=group)
    cdtype = z.dtype
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(1, (target_N.long() - offset).unsqueeze(1)).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)

    f = lambda t: t.to(cdtype)  # noqa: E731
    adv, logp_old, rbar, w, weight = f(adv_N), f(logp_old_N), f(rbar_N), f(w_N), f(weight_N)
    kind = kind_N.long()
    live = weight > 0  # as red_megatron.algo: weight <= 0 is masked (0 = padding)
    lp = torch.where(live, logp, logp.detach())  # weight-0 rows: no gradient path at all

    # ONLINE: PPO clip.
    ratio = torch.exp(lp - logp_old)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_lo, 1.0 + eps_hi) * adv
    online_term = torch.minimum(unclipped, clipped)
    # OFFLINE_SHIFT: r_off = π / (sg(π) + (1 - sg(π))·rbar), in the log domain.
    lp_d = lp.detach()
    log_denom = torch.logaddexp(lp_d, torch.log1p(-lp_d.exp()) + torch.log(rbar))
    shift_term = torch.exp(lp - log_denom) * adv
    # OFFLINE_LUFFY: π / (π + gamma).
    luffy_term = torch.sigmoid(lp - torch.log(torch.tensor(luffy_gamma, dtype=cdtype))) * adv
    term = torch.where(kind == ONLINE, online_term,
                       torch.where(kind == OFFLINE_SHIFT, shift_term,
                                   torch.where(kind == OFFLINE_LUFFY, luffy_term,  # unknown kind: loud NaN
                                               torch.where(kind == NLL, lp, torch.full_like(lp, float("nan"))))))
    per_token = -weight * w * term
    if entropy_coef != 0.0:
        per_token = per_token - entropy_coef * weight * entropy
    if kl_coef != 0.0:
        d = f(ref_logp_N) - lp
        per_token = per_token + kl_coef * weight * (torch.exp(d) - d - 1.0)
    loss = torch.where(live, per_token, torch.zeros_like(per_token)).sum()

    online_live = (kind == ONLINE) & live
    n_online = online_live.sum()
    n_clipped = (online_live & (clipped.detach() < unclipped.detach())).sum()
    clip_frac = torch.where(n_online > 0, n_clipped.to(cdtype) / n_online.clamp(min=1).to(cdtype),
                            torch.zeros((), dtype=cdtype, device=loss.device))
    ent_out = entropy if entropy_coef != 0.0 else entropy.detach()
    return RedLossOutput(loss=loss, logp_N=logp.detach(), entropy_N=ent_out, clip_frac=clip_frac)
