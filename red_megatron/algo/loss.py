"""The RED objective over per-token tensors (paper Eq. 10; RED_SPEC step 6): the reference loss.

    J = 1/(G+1) · [ Σ_online_i 1/|o_i| Σ_t min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε_lo, 1+ε_hi) Â_i)
                  + w · 1/|o^sft| Σ_t r^offline_t Â_sft ]                               (Eq. 10)

Every normaliser lives in weight_N (token_terms.py), so the loss is one weighted sum:

    L = − Σ_t weight_t · w_t · term_t(kind_t)
        − entropy_coef · Σ_t weight_t · H_t
        + kl_coef      · Σ_t weight_t · k3(ref_logp_t, logp_t),   k3(x) = e^x − x − 1, x = ref − logp

    term(ONLINE)        = min(r·Â, clip(r, 1−ε_lo, 1+ε_hi)·Â),   r = exp(logp − logp_old)
    term(OFFLINE_SHIFT) = r^offline·Â,  r^offline = π / (sg(π) + (1 − sg(π))·r̄)   (unclipped)
    term(OFFLINE_LUFFY) = π/(π + γ)·Â                                               (unclipped)
    term(NLL)           = logp

``red_token_loss`` is the ground truth the fused Triton kernel (kernels/red_loss.py) is tested
against: same inputs, same loss, gradients through logp_N (and entropy_N when it carries grad).
It works in logp_N's dtype (float64 for gradcheck).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from red_megatron.algo.policy_shift import luffy_ratio, shift_ratio
from red_megatron.algo.token_terms import TokenKind


@dataclass(frozen=True)
class TokenLossOutput:
    loss: torch.Tensor  # scalar, with grad
    policy_loss: torch.Tensor  # detached: −Σ weight·w·term
    entropy_loss: torch.Tensor  # detached: −entropy_coef·Σ weight·H
    kl_loss: torch.Tensor  # detached: kl_coef·Σ weight·k3
    clip_frac: torch.Tensor  # detached scalar


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
    logp_old_N: torch.Tensor,
    entropy_N: torch.Tensor | None,
    kind_N: torch.Tensor,
    adv_N: torch.Tensor,
    rbar_N: torch.Tensor,
    w_N: torch.Tensor,
    weight_N: torch.Tensor,
    *,
    eps_lo: float = 0.2,
    eps_hi: float = 0.2,
    luffy_gamma: float = 0.1,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
    ref_logp_N: torch.Tensor | None = None,
) -> TokenLossOutput:
    """The contract's loss from per-token log-probs (see module docstring). entropy_N may be
    None when entropy_coef == 0; ref_logp_N may be None when kl_coef == 0."""
    _check_inputs(logp_N, {"logp_old_N": logp_old_N, "entropy_N": entropy_N, "kind_N": kind_N, "adv_N": adv_N,
                           "rbar_N": rbar_N, "w_N": w_N, "weight_N": weight_N, "ref_logp_N": ref_logp_N})
    if kl_coef != 0.0 and ref_logp_N is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp_N (the reference policy's log-probs)")
    if entropy_coef != 0.0 and entropy_N is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy_N")
    if kind_N.numel() and (int(kind_N.min()) < 0 or int(kind_N.max()) > int(TokenKind.NLL)):
        raise ValueError(f"kind_N values must be in 0..3 (TokenKind), got range [{int(kind_N.min())}, {int(kind_N.max())}]")
    dt = logp_N.dtype
    kind = kind_N.long()
    # weight 0 marks padding: such tokens contribute 0 and get no gradient, whatever the other
    # inputs hold there (garbage logp_old, inf, NaN): every input is replaced by a safe value.
    live = weight_N > 0
    zero = torch.zeros_like(logp_N)

    def safe(t: torch.Tensor) -> torch.Tensor:
        return torch.where(live, t.to(dt), zero)

    logp, adv, rbar, w, weight = safe(logp_N), safe(adv_N), safe(rbar_N), safe(w_N), safe(weight_N)
    logp_sg = logp.detach()
    is_on, is_shift = (kind == TokenKind.ONLINE) & live, (kind == TokenKind.OFFLINE_SHIFT) & live
    is_luffy, is_nll = (kind == TokenKind.OFFLINE_LUFFY) & live, (kind == TokenKind.NLL) & live

    # Each branch sees safe inputs on tokens of other kinds, so torch.where never routes
    # a NaN/inf gradient from an unselected branch.
    ratio = (logp - torch.where(is_on, logp_old_N.to(dt), logp_sg)).exp()
    online_term, clipped = clipped_surrogate(ratio, adv, eps_lo, eps_hi)
    shift_term = shift_ratio(logp, torch.where(is_shift, rbar, zero)) * adv
    luffy_term = luffy_ratio(logp, luffy_gamma) * adv
    term = torch.where(is_on, online_term, torch.where(is_shift, shift_term, torch.where(is_luffy, luffy_term, logp)))
    term = torch.where(is_on | is_shift | is_luffy | is_nll, term, zero)

    policy_loss = -(weight * w * term).sum()
    loss = policy_loss
    ent_loss = torch.zeros((), dtype=dt)
    kl_loss = torch.zeros((), dtype=dt)
    if entropy_coef != 0.0:
        ent_loss = -entropy_coef * (weight * safe(entropy_N)).sum()
        loss = loss + ent_loss
    if kl_coef != 0.0:
        ref = torch.where(live, ref_logp_N.to(dt), logp_sg)
        kl_loss = kl_coef * (weight * k3(ref, logp)).sum()
        loss = loss + kl_loss
    n_on = int(is_on.sum())
    clip_frac = (clipped & is_on).sum().to(torch.float32) / n_on if n_on else torch.zeros((), dtype=torch.float32)
    return TokenLossOutput(
        loss=loss, policy_loss=policy_loss.detach(), entropy_loss=ent_loss.detach(),
        kl_loss=kl_loss.detach(), clip_frac=clip_frac.detach(),
    )
