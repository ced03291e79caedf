"""Pure-PyTorch reference of the fused RED loss: the logits side composed with the algorithm's loss.

Plain autograd, written to be obviously right rather than fast: it materialises the full-vocabulary
fp32 (or float64) log-softmax. It is the one reference shared by the kernel's tests and benchmark
(the benchmark's plain-PyTorch baseline is this function).

Two parts (docs/KERNEL_CONTRACT.md):
  logits side  z = logits / temperature over the real vocabulary (global ids >= vocab_size are
               padding and dropped), logp = log_softmax(z)[target], H = -Σ p log p  (vocab-parallel);
  per token    red_megatron.algo.loss.red_token_loss(logp, ..., H): the one PyTorch definition of
               the per-token RED terms, the masking of weight <= 0 tokens and the clip fraction.

Tensor parallelism: each rank holds a vocab shard; the shards are all-gathered (same V_local on
every rank, as Megatron pads), the rank's own shard is put back as the live autograd tensor, and
every rank computes the full loss redundantly, so autograd gives each rank exactly its shard's
gradient of the (identical) global loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from kernels._common import DEFAULT_PARAMS as _D
from kernels._common import RedLossOutput, check_inputs
from red_megatron.algo.loss import red_token_loss

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


def _logp_entropy(logits_NV, target_N, *, vocab_start, vocab_size, temperature, group):
    """(logp_N, entropy_N) with autograd to this rank's shard, in fp32 (float64 for float64 logits)."""
    z, offset = _full_vocab_z(logits_NV, vocab_start=vocab_start, vocab_size=vocab_size,
                              temperature=temperature, group=group)
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(1, (target_N.long() - offset).unsqueeze(1)).squeeze(1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def logprob_entropy(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
                    temperature: float, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_N, entropy_N) without grad, fp32 (float64 for float64 logits): old-policy pass."""
    check_inputs(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size, temperature=temperature)
    with torch.no_grad():
        return _logp_entropy(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size,
                             temperature=temperature, group=group)


def red_loss_reference(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
                       temperature: float, kind_N: torch.Tensor, adv_N: torch.Tensor, rbar_N: torch.Tensor,
                       w_N: torch.Tensor, weight_N: torch.Tensor, logp_old_N: Optional[torch.Tensor] = None,
                       eps_lo: float = _D.eps_lo, eps_hi: float = _D.eps_hi, luffy_gamma: float = _D.luffy_gamma,
                       entropy_coef: float = _D.entropy_coef, kl_coef: float = _D.kl_coef,
                       ref_logp_N: Optional[torch.Tensor] = None, group=None,
                       grad_in_forward: bool = False) -> RedLossOutput:
    """Reference of `kernels.red_loss.red_loss` (same signature; grad_in_forward is accepted and
    ignored: plain autograd has no such memory trick). A kind outside TokenKind is a ValueError here
    (the kernel, which never synchronises on data, gives NaN)."""
    del grad_in_forward
    check_inputs(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size, temperature=temperature,
                 per_token=dict(kind_N=kind_N, adv_N=adv_N, logp_old_N=logp_old_N, rbar_N=rbar_N, w_N=w_N,
                                weight_N=weight_N, ref_logp_N=ref_logp_N),
                 eps_lo=eps_lo, eps_hi=eps_hi, luffy_gamma=luffy_gamma, kl_coef=kl_coef)
    logp, entropy = _logp_entropy(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size,
                                  temperature=temperature, group=group)
    out = red_token_loss(logp, logp_old_N, entropy, kind_N, adv_N, rbar_N, w_N, weight_N, eps_lo=eps_lo,
                         eps_hi=eps_hi, luffy_gamma=luffy_gamma, entropy_coef=entropy_coef, kl_coef=kl_coef,
                         ref_logp_N=ref_logp_N if kl_coef != 0.0 else None)
    ent_out = entropy if entropy_coef != 0.0 else entropy.detach()
    return RedLossOutput(loss=out.loss, logp_N=logp.detach(), entropy_N=ent_out, clip_frac=out.clip_frac)
