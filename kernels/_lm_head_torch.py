"""PyTorch twins of kernels/red_loss.py's three passes, on one chunk of logits (lm_head_loss backend="torch").

The same quantities in the same layout as the Triton passes (see red_loss.py's docstring): stats rows
(m = raw max, s = Σ exp(u), sz = Σ exp(u)·u with u = (x - m)/T, raw target logit or -inf), the TP
merge of the gathered tuples, and dL/dlogits = (a·(δ_target - p) - b·p·(log p + H)) / T. The per-token
terms are red_megatron.algo.loss.red_token_loss itself: a and b are its autograd gradients with respect
to logp and H (so this backend can never disagree with the algorithm's formula). Math in fp32 (float64
for float64 logits). It makes the fused LM head usable without Triton (the CPU, loss_impl="reference")
with the same chunk-bounded memory: a few fp32 temporaries of the chunk's size.
"""
from __future__ import annotations

import torch

from red_megatron.algo.loss import red_token_loss

NEG_INF = float("-inf")


def _n_real(vocab_start: int, vocab_size: int, v_local: int) -> int:
    return max(0, min(v_local, vocab_size - vocab_start))


def _real(logits_CV: torch.Tensor, vocab_start: int, vocab_size: int) -> torch.Tensor:
    cdt = torch.float64 if logits_CV.dtype == torch.float64 else torch.float32
    return logits_CV[:, :_n_real(vocab_start, vocab_size, logits_CV.shape[1])].to(cdt)


def stats(logits_CV, target_C, vocab_start, vocab_size, temperature) -> torch.Tensor:
    """[C, 4] fp32: (m, s, sz, z_target) of this shard's real columns."""
    x = _real(logits_CV, vocab_start, vocab_size)
    out = torch.empty((x.shape[0], 4), dtype=torch.float32, device=x.device)
    tgt = target_C.long() - vocab_start
    own = (tgt >= 0) & (tgt < x.shape[1])
    if x.shape[1] == 0:  # an all-padding shard: contributes nothing to any row
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = NEG_INF, 0.0, 0.0, NEG_INF
        return out
    m = x.max(1).values
    m_safe = torch.where(m == NEG_INF, 0.0, m)
    u = (x - m_safe[:, None]).mul_(1.0 / temperature)  # <= 0, shift before scale
    e = torch.exp(u)
    out[:, 1] = e.sum(1)
    out[:, 2] = torch.nan_to_num_(u.mul_(e), nan=0.0).sum(1)  # 0·(-inf) is NaN: a -inf logit adds 0
    out[:, 0] = m
    zt = x.gather(1, tgt.clamp(0, x.shape[1] - 1)[:, None]).squeeze(1)
    out[:, 3] = torch.where(own, zt, NEG_INF)
    return out


def tokens(stats_TN4, temperature, per_token, params) -> dict:
    """Merge of the TP tuples -> logp, H, (mraw, logs) for the gradient pass; with per_token also the
    loss, clip_frac and the partials dlogp = dL/dlogp, dent = dL/dH (red_token_loss's autograd)."""
    inv_t = 1.0 / temperature
    m_r, s_r, sz_r, zt_r = stats_TN4.unbind(-1)  # [TP, N] each
    M = m_r.max(0).values
    M_safe = torch.where(M == NEG_INF, 0.0, M)
    fin = m_r > NEG_INF
    d = torch.where(fin, (m_r - M_safe) * inv_t, 0.0)
    a = torch.where(fin, torch.exp(d), 0.0)
    S = (a * s_r).sum(0)
    SZ = (a * (sz_r + d * s_r)).sum(0)
    ZT = zt_r.max(0).values
    logS = torch.log(S)
    ent = torch.clamp(logS - SZ / S, min=0.0)
    logp = torch.clamp((ZT - M_safe) * inv_t - logS, max=0.0)
    logp = torch.where(ZT == NEG_INF, float("nan"), logp)  # target owned by no rank: loud NaN, as the kernel
    out = {"logp": logp, "ent": ent, "mraw": M_safe, "logs": logS}
    if per_token is None:
        return out
    coef = params["entropy_coef"]
    lp = logp.detach().requires_grad_()
    en = ent.detach().requires_grad_(coef != 0.0)
    with torch.enable_grad():
        res = red_token_loss(lp, per_token["logp_old_N"], en if coef != 0.0 else None, per_token["kind_N"],
                             per_token["adv_N"], per_token["rbar_N"], per_token["w_N"], per_token["weight_N"],
                             ref_logp_N=per_token["ref_logp_N"], **params)
        grads = torch.autograd.grad(res.loss, [lp, en] if coef != 0.0 else [lp], allow_unused=True)
    out["loss"] = res.loss.detach()
    out["clip_frac"] = res.clip_frac.to(torch.float32)
    out["dlogp"] = grads[0] if grads[0] is not None else torch.zeros_like(logp)
    out["dent"] = grads[1] if coef != 0.0 and grads[1] is not None else torch.zeros_like(logp)
    return out


def grad(logits_CV, target_C, tok_C, gscale, gent_C, vocab_start, vocab_size, temperature) -> torch.Tensor:
    """dL/dlogits of the chunk [C, V_local] (padding columns 0), in the compute dtype."""
    inv_t = 1.0 / temperature
    x = _real(logits_CV, vocab_start, vocab_size)
    if x.shape[1] == 0:
        return torch.zeros(logits_CV.shape, dtype=x.dtype, device=x.device)
    a = (tok_C["dlogp"] * gscale).to(x.dtype)[:, None]
    b = tok_C["dent"] * gscale
    if gent_C is not None:
        b = b + gent_C
    b = b.to(x.dtype)[:, None]
    lp = (x - tok_C["mraw"].to(x.dtype)[:, None]).mul_(inv_t).sub_(tok_C["logs"].to(x.dtype)[:, None])  # log p_v
    p = torch.exp(lp)
    g = lp.add_(tok_C["ent"].to(x.dtype)[:, None]).mul_(b).add_(a).mul_(p).neg_()  # -p·(a + b·(log p + H))
    g = torch.where(p > 0.0, g, 0.0)  # a -inf logit: p = 0 and grad 0, not NaN
    tgt = target_C.long() - vocab_start
    own = (tgt >= 0) & (tgt < x.shape[1])
    rows = torch.nonzero(own).squeeze(1)
    g[rows, tgt[rows]] += a[rows, 0]
    g.mul_(inv_t)
    if x.shape[1] == logits_CV.shape[1]:
        return g
    g_full = torch.zeros(logits_CV.shape, dtype=x.dtype, device=x.device)  # padding columns: 0
    g_full[:, :x.shape[1]] = g
    return g_full
