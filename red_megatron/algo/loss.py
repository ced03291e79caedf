"""The RED objective over per-token tensors (paper Eq. 10; RED_SPEC step 6): the one per-token formula.

    J = 1/(G+1) · [ Σ_online_i 1/|o_i| Σ_t min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε_lo, 1+ε_hi) Â_i)
                  + w · 1/|o^sft| Σ_t r^offline_t Â_sft ]                               (Eq. 10)

Every normaliser lives in weight_N (token_terms.py), so the loss is one weighted sum:

    L = Σ_t [ − weight_t · w_t · term_t(kind_t) − entropy_coef · weight_t · H_t
              + kl_coef · weight_t · k3(ref_logp_t, logp_t) ],     k3(x) = e^x − x − 1, x = ref − logp

    term(ONLINE)        = min(r·Â, clip(r, 1−ε_lo, 1+ε_hi)·Â),   r = exp(logp − logp_old)
    term(OFFLINE_SHIFT) = r^offline·Â   (policy_shift.shift_ratio, unclipped)
    term(OFFLINE_LUFFY) = π/(π + γ)·Â   (policy_shift.luffy_ratio, unclipped)
    term(NLL)           = logp
    term(DPO)           = Â·logp        (Â: the sequence's DPO coefficient, algo/dpo.py: the pair loss
                                          linearised at the current weights, so its gradient is exact)

This is the only place the formula is written in PyTorch. kernels/red_loss_reference.py is the
logits side (log-prob + entropy from vocab-parallel logits) composed with ``red_token_loss``; the
fused Triton kernel (kernels/red_loss.py) is tested against that composition, and the kernel
benchmark's plain-PyTorch baseline is the same composition (docs/KERNEL_CONTRACT.md).
It works in logp_N's dtype (float64 for gradcheck).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from red_megatron.algo.contract import DEFAULT_PARAMS as _D
from red_megatron.algo.contract import KINDS, TokenKind
from red_megatron.algo.policy_shift import luffy_ratio, shift_ratio


@dataclass(frozen=True)
class TokenLossOutput:
    loss: torch.Tensor  # scalar, with grad
    policy_loss: torch.Tensor  # detached: −Σ weight·w·term
    entropy_loss: torch.Tensor  # detached: −entropy_coef·Σ weight·H
    kl_loss: torch.Tensor  # detached: kl_coef·Σ weight·k3
    clip_frac: torch.Tensor  # detached scalar, logp_N's dtype


def clipped_surrogate(ratio_N: torch.Tensor, adv_N: torch.Tensor, eps_lo: float, eps_hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(min(r·Â, clip(r)·Â), is_clipped_N): the PPO/GRPO online term."""
    unclipped = ratio_N * adv_N
    clipped = ratio_N.clamp(1.0 - eps_lo, 1.0 + eps_hi) * adv_N
    return torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def k3(ref_logp_N: torch.Tensor, logp_N: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref): e^x − x − 1 with x = ref − logp (>= 0)."""
    x = ref_logp_N - logp_N
    return x.exp() - x - 1.0


def _check_inputs(logp_N: torch.Tensor, named: dict[str, torch.Tensor | None]) -> None:
    if logp_N.dim() != 1:
        raise ValueError(f"logp_N must be 1-D [N], got shape {tuple(logp_N.shape)}")
    for name, t in named.items():
        if t is not None and t.shape != logp_N.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(logp_N.shape)} like logp_N")


def red_token_loss(
    logp_N: torch.Tensor,
    logp_old_N: torch.Tensor | None,
    entropy_N: torch.Tensor | None,
    kind_N: torch.Tensor,
    adv_N: torch.Tensor,
    rbar_N: torch.Tensor,
    w_N: torch.Tensor,
    weight_N: torch.Tensor,
    *,
    eps_lo: float = _D.eps_lo,
    eps_hi: float = _D.eps_hi,
    luffy_gamma: float = _D.luffy_gamma,
    entropy_coef: float = _D.entropy_coef,
    kl_coef: float = _D.kl_coef,
    ref_logp_N: torch.Tensor | None = None,
) -> TokenLossOutput:
    """The contract's loss from per-token log-probs (see module docstring). entropy_N may be
    None when entropy_coef == 0; ref_logp_N may be None when kl_coef == 0; logp_old_N None means
    on-policy (the ratio's denominator is logp_N itself, detached: r = 1). Gradients flow
    through logp_N (and entropy_N when it carries grad)."""
    _check_inputs(logp_N, {"logp_old_N": logp_old_N, "entropy_N": entropy_N, "kind_N": kind_N, "adv_N": adv_N,
                           "rbar_N": rbar_N, "w_N": w_N, "weight_N": weight_N, "ref_logp_N": ref_logp_N})
    if kl_coef != 0.0 and ref_logp_N is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp_N (the reference policy's log-probs)")
    if entropy_coef != 0.0 and entropy_N is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy_N")
    if kind_N.numel() and (int(kind_N.min()) < 0 or int(kind_N.max()) > max(KINDS)):
        raise ValueError(f"kind_N values must be in 0..{max(KINDS)} (TokenKind), got range "
                         f"[{int(kind_N.min())}, {int(kind_N.max())}]")
    dt = logp_N.dtype
    kind = kind_N.long()
    # weight <= 0 marks padding: such tokens contribute 0 and get no gradient, whatever the other
    # inputs hold there (garbage logp_old, inf, NaN): every input is replaced by a safe value.
    live = weight_N > 0
    zero = torch.zeros_like(logp_N)

    def safe(t: torch.Tensor) -> torch.Tensor:
        return torch.where(live, t.to(dt), zero)

    logp, adv, rbar, w, weight = safe(logp_N), safe(adv_N), safe(rbar_N), safe(w_N), safe(weight_N)
    logp_sg = logp.detach()
    is_on = kind == TokenKind.ONLINE
    # Each branch sees safe inputs on tokens of other kinds, so torch.where never routes a NaN/inf
    # gradient from an unselected branch.
    ratio = (logp - (logp_sg if logp_old_N is None else torch.where(is_on, logp_old_N.to(dt), logp_sg))).exp()
    online_term, clipped = clipped_surrogate(ratio, adv, eps_lo, eps_hi)
    shift_term = shift_ratio(logp, torch.where(kind == TokenKind.OFFLINE_SHIFT, rbar, zero)) * adv
    luffy_term = luffy_ratio(logp, luffy_gamma) * adv
    term = torch.where(is_on, online_term,
                       torch.where(kind == TokenKind.OFFLINE_SHIFT, shift_term,
                                   torch.where(kind == TokenKind.OFFLINE_LUFFY, luffy_term,
                                               torch.where(kind == TokenKind.DPO, adv * logp, logp))))
    policy_N = -weight * w * term
    per_token = policy_N
    ent_N = kl_N = None
    if entropy_coef != 0.0:
        ent_N = entropy_coef * weight * safe(entropy_N)
        per_token = per_token - ent_N
    if kl_coef != 0.0:
        kl_N = kl_coef * weight * k3(torch.where(live, ref_logp_N.to(dt), logp_sg), logp)
        per_token = per_token + kl_N
    loss = torch.where(live, per_token, zero).sum()

    def total(t_N: torch.Tensor | None, sign: float = 1.0) -> torch.Tensor:
        if t_N is None:
            return torch.zeros((), dtype=dt, device=logp_N.device)
        return sign * torch.where(live, t_N.detach(), zero).sum()

    online_live = is_on & live
    n_online = online_live.sum()
    n_clipped = (online_live & clipped).sum()
    clip_frac = torch.where(n_online > 0, n_clipped.to(dt) / n_online.clamp(min=1).to(dt),
                            torch.zeros((), dtype=dt, device=logp_N.device))
    return TokenLossOutput(loss=loss, policy_loss=total(policy_N), entropy_loss=total(ent_N, -1.0),
                           kl_loss=total(kl_N), clip_frac=clip_frac.detach())
