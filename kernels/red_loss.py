"""Fused vocab-parallel log-prob + entropy + RED policy loss, forward and backward (Triton).

Why: the naive PyTorch version materialises several fp32 [N, V] tensors (log-softmax, probs,
p·logp, their grads): ~28 GiB and 62 ms at N=16,384, V=151,936 on an H100. This op is memory
bound, so the floor is one read of the logits in the forward and one read + one write in the
backward; this module does exactly that and keeps everything else per token.

Passes (x = raw logits, z = x / temperature, fp32 math whatever the logits dtype; columns with
global id >= vocab_size are padding and count as -inf, i.e. are never read). Every exponent is
formed as (x - max_raw) / temperature, shift before scale, so logits of ±1e4 lose no precision:
  1. `_stats_kernel`, one program per row, reads the local shard once: online max m of the raw
     logits (starting at -inf), s = Σ exp(u), sz = Σ exp(u)·u with u = (x - m)/T (bounded, so no
     cancellation), and the raw target logit if this shard owns it (else -inf).
     -> stats_N4 [N, 4] fp32.
  2. Collective: ONE all_gather of stats_N4 -> [TP, N, 4] over `group` (none when group is None
     or has one rank). Every rank then holds identical per-token numbers.
  3. `_token_kernel`, per token: log-sum-exp merge of the TP tuples (M = max_r m_r, S, log S,
     H = log S - SZ/S, logp = (x_target - M)/T - log S), the contract's term per kind (the formula of
     red_megatron.algo.loss.red_token_loss, kind codes from TokenKind as constexprs), the per-token
     loss contribution and the two partials a = dL/dlogp, b = dL/dH. Loss = Σ contributions
     (torch.sum: deterministic).
  4. `_grad_kernel`, backward, one program per row, reads the shard once and writes dL/dlogits
     once (padding columns get 0), with log p_v = (x_v - M)/T - log S:
        dL/dz_v = a·(δ_v,target - p_v) - b·p_v·(log p_v + H),   dL/dx_v = dL/dz_v / T
     (a, b times the incoming grads).
Recompute: p_v is recomputed in pass 4 from the saved per-token M, log S, H (no [N, V] tensor is
saved). grad_in_forward=True runs pass 4 inside the forward, in place into the logits buffer (the
logits are clobbered; the loss must be their last use), so the backward only hands that buffer out
(scaled in place if the incoming grad is not exactly 1): extra memory is per-token only.
No atomics, fixed reduction orders: results are bitwise deterministic run to run.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from kernels._common import DEFAULT_PARAMS as _D
from kernels._common import RedLossOutput, TokenKind, check_inputs

__all__ = ["red_loss", "logprob_entropy", "RedLossOutput", "KernelConfig", "set_kernel_config"]


@dataclasses.dataclass(kw_only=True)
class KernelConfig:
    """Block sizes, warps, pipelining stages. The defaults are the GPU's: the best of
    benchmarks/kernel_bench.py's sweep on an H100 at N=16,384, V=151,936, bf16, 2026-11-23
    (benchmarks/reports/kernel_2026-11-23.md). The interpreter (CPU) wants small blocks."""

    block_v_stats: int = 4096
    warps_stats: int = 4
    block_v_grad: int = 2048
    warps_grad: int = 16
    block_t: int = 1024
    stages_stats: int = 3
    stages_grad: int = 3
    stream: bool = False  # evict-first loads / streaming stores (the logits are touched once per pass)

    def __post_init__(self):
        for f in ("block_v_stats", "block_v_grad", "block_t"):
            v = getattr(self, f)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{f}: expected a power of two >= 16, got {v}")
        for f in ("warps_stats", "warps_grad"):
            if getattr(self, f) not in (1, 2, 4, 8, 16, 32):
                raise ValueError(f"{f}: expected one of 1, 2, 4, 8, 16, 32, got {getattr(self, f)}")
        for f in ("stages_stats", "stages_grad"):
            if not 1 <= getattr(self, f) <= 8:
                raise ValueError(f"{f}: expected 1..8, got {getattr(self, f)}")


_CPU_CONFIG = KernelConfig(block_v_stats=512, warps_stats=1, block_v_grad=512, warps_grad=1, block_t=64,
                           stages_stats=1, stages_grad=1)
_GPU_CONFIG = KernelConfig()


def set_kernel_config(config: KernelConfig) -> None:
    """Override the GPU launch configuration (used by the benchmark's sweep)."""
    global _GPU_CONFIG
    _GPU_CONFIG = config


def _config(device: torch.device) -> KernelConfig:
    return _GPU_CONFIG if device.type == "cuda" else _CPU_CONFIG


@triton.jit
def _stats_kernel(x_ptr,          # [N, V_local] logits shard, any dtype, strides (stride_xn, stride_xv)
                  tgt_ptr,        # [N] global target ids (int32/int64)
                  stats_ptr,      # [N, 4] fp32 out: m (raw max logit), s, sz, raw target logit (-inf: not here)
                  stride_xn, stride_xv, stride_t,
                  n_real,         # real (non-padding) columns here: clamp(vocab_size - vocab_start, 0, V_local)
                  vocab_start, inv_temp,
                  BLOCK_V: tl.constexpr, STREAM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xn
    cols0 = tl.arange(0, BLOCK_V)
    m = float("-inf")
    s = 0.0
    sz = 0.0
    for start in range(0, n_real, BLOCK_V):
        cols = start + cols0
        mask = cols < n_real
        if STREAM:
            x = tl.load(x_row + cols * stride_xv, mask=mask, other=float("-inf"), eviction_policy="evict_first")
        else:
            x = tl.load(x_row + cols * stride_xv, mask=mask, other=float("-inf"))
        x = x.to(tl.float32)                                        # raw logits: shift first, then scale
        m_new = tl.maximum(m, tl.max(x, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)      # all -inf so far: keep exp() finite
        finite_old = m > float("-inf")
        d = tl.where(finite_old, (m - m_safe) * inv_temp, 0.0)      # <= 0: shift of the old sums
        alpha = tl.where(finite_old, tl.exp(d), 0.0)
        u = (x - m_safe) * inv_temp                                 # <= 0, -inf on masked columns
        e = tl.exp(u)
        eu = tl.where(e > 0.0, e * u, 0.0)                          # 0·(-inf) would be NaN (padding, -inf logits)
        sz = alpha * (sz + d * s) + tl.sum(eu, axis=0)
        s = alpha * s + tl.sum(e, axis=0)
        m = m_new
    tgt = tl.load(tgt_ptr + row * stride_t).to(tl.int64) - vocab_start
    own = (tgt >= 0) & (tgt < n_real)
    tgt_safe = tl.where(own, tgt, 0)
    z_t = tl.load(x_row + tgt_safe * stride_xv, mask=own, other=0.0).to(tl.float32)
    z_t = tl.where(own, z_t, float("-inf"))
    out = stats_ptr + row * 4
    tl.store(out + 0, m)
    tl.store(out + 1, s)
    tl.store(out + 2, sz)
    tl.store(out + 3, z_t)


@triton.jit
def _token_kernel(stats_ptr,      # [TP, N, 4] fp32 gathered per-rank tuples (m, s, sz, z_target)
                  kind_ptr, adv_ptr, lpold_ptr, rbar_ptr, w_ptr, wt_ptr, ref_ptr,  # [N] each
                  logp_ptr, ent_ptr, mraw_ptr, logs_ptr,  # [N] fp32 out; lse = mraw/T + logs
                  contrib_ptr, dlogp_ptr, dent_ptr,  # [N] fp32 out: loss contribution, dL/dlogp, dL/dH
                  clip_ptr, online_ptr,              # [N] fp32 out: 1.0/0.0 flags for clip_frac
                  N, inv_temp, eps_lo, eps_hi, log_gamma, ent_coef, kl_coef,
                  TP: tl.constexpr, COMPUTE_LOSS: tl.constexpr, HAS_KL: tl.constexpr, OLD_IS_LOGP: tl.constexpr,
                  BLOCK_T: tl.constexpr,
                  ONLINE: tl.constexpr, SHIFT: tl.constexpr, LUFFY: tl.constexpr, NLL: tl.constexpr,
                  DPO: tl.constexpr):  # TokenKind
    offs = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    msk = offs < N
    NEG_INF = float("-inf")
    # log-sum-exp merge of the TP tuples
    M = tl.full((BLOCK_T,), NEG_INF, tl.float32)
    for r in tl.static_range(TP):
        M = tl.maximum(M, tl.load(stats_ptr + (r * N + offs) * 4 + 0, mask=msk, other=0.0))
    M_safe = tl.where(M == NEG_INF, 0.0, M)
    S = tl.zeros((BLOCK_T,), tl.float32)
    SZ = tl.zeros((BLOCK_T,), tl.float32)
    ZT = tl.full((BLOCK_T,), NEG_INF, tl.float32)
    for r in tl.static_range(TP):
        base = stats_ptr + (r * N + offs) * 4
        m_r = tl.load(base + 0, mask=msk, other=0.0)
        s_r = tl.load(base + 1, mask=msk, other=1.0)
        sz_r = tl.load(base + 2, mask=msk, other=0.0)
        zt_r = tl.load(base + 3, mask=msk, other=0.0)
        fin = m_r > NEG_INF
        d = tl.where(fin, (m_r - M_safe) * inv_temp, 0.0)
        a = tl.where(fin, tl.exp(d), 0.0)
        S += a * s_r
        SZ += a * (sz_r + d * s_r)
        ZT = tl.maximum(ZT, zt_r)
    logS = tl.log(S)
    ent = tl.maximum(logS - SZ / S, 0.0)             # SZ <= 0 by construction; max() guards rounding
    logp = tl.minimum((ZT - M_safe) * inv_temp - logS, 0.0)  # relative to the max: exact at |z| ~ 1e4
    logp = tl.where(ZT == NEG_INF, float("nan"), logp)  # target owned by no rank (bad id): loud NaN
    tl.store(logp_ptr + offs, logp, mask=msk)
    tl.store(ent_ptr + offs, ent, mask=msk)
    tl.store(mraw_ptr + offs, M_safe, mask=msk)
    tl.store(logs_ptr + offs, logS, mask=msk)
    if COMPUTE_LOSS:
        kind = tl.load(kind_ptr + offs, mask=msk, other=NLL).to(tl.int32)
        A = tl.load(adv_ptr + offs, mask=msk, other=0.0).to(tl.float32)
        if OLD_IS_LOGP:  # on-policy: the ratio's denominator is this forward's own (detached) logp
            lp_old = logp
        else:
            lp_old = tl.load(lpold_ptr + offs, mask=msk, other=0.0).to(tl.float32)
        rbar = tl.load(rbar_ptr + offs, mask=msk, other=1.0).to(tl.float32)
        w = tl.load(w_ptr + offs, mask=msk, other=0.0).to(tl.float32)
        wt = tl.load(wt_ptr + offs, mask=msk, other=0.0).to(tl.float32)
        live = wt > 0.0  # as red_megatron.algo: weight <= 0 is masked (0 = padding)
        # ONLINE: min(r·A, clip(r)·A); its d/dlogp is r·A unless the clip branch is strictly smaller.
        r = tl.exp(logp - lp_old)
        unc = r * A
        clp = tl.minimum(tl.maximum(r, 1.0 - eps_lo), 1.0 + eps_hi) * A
        clipped = clp < unc
        t_on = tl.where(clipped, clp, unc)
        g_on = tl.where(clipped, 0.0, unc)
        # OFFLINE_SHIFT: r_off = exp(logp - log(π + (1 - π)·rbar)), value and d/dlogp both r_off·A.
        pi = tl.exp(logp)
        b = tl.log(1.0 - pi) + tl.log(rbar)
        mx = tl.maximum(logp, b)
        log_denom = mx + tl.log(tl.exp(logp - mx) + tl.exp(b - mx))
        t_sh = tl.exp(logp - log_denom) * A
        # OFFLINE_LUFFY: f = π/(π+γ) = sigmoid(logp - log γ); df/dlogp = f(1-f).
        f = 1.0 / (1.0 + tl.exp(log_gamma - logp))
        t_lf = f * A
        g_lf = f * (1.0 - f) * A
        # DPO: A·logp, A the sequence's coefficient (the pair loss linearised: algo/dpo.py); d/dlogp = A.
        term = tl.where(kind == ONLINE, t_on, tl.where(kind == SHIFT, t_sh, tl.where(kind == LUFFY, t_lf,
                        tl.where(kind == NLL, logp, tl.where(kind == DPO, A * logp, float("nan"))))))
        dterm = tl.where(kind == ONLINE, g_on, tl.where(kind == SHIFT, t_sh, tl.where(kind == LUFFY, g_lf,
                         tl.where(kind == NLL, 1.0, tl.where(kind == DPO, A, float("nan"))))))
        contrib = -wt * w * term - ent_coef * wt * ent
        dlogp = -wt * w * dterm
        if HAS_KL:
            ref = tl.load(ref_ptr + offs, mask=msk, other=0.0).to(tl.float32)
            dk = ref - logp
            edk = tl.exp(dk)
            contrib += kl_coef * wt * (edk - dk - 1.0)
            dlogp += kl_coef * wt * (1.0 - edk)
        tl.store(contrib_ptr + offs, tl.where(live, contrib, 0.0), mask=msk)
        tl.store(dlogp_ptr + offs, tl.where(live, dlogp, 0.0), mask=msk)
        tl.store(dent_ptr + offs, tl.where(live, -ent_coef * wt, 0.0), mask=msk)
        on = live & (kind == ONLINE)
        tl.store(clip_ptr + offs, tl.where(on & clipped, 1.0, 0.0), mask=msk)
        tl.store(online_ptr + offs, tl.where(on, 1.0, 0.0), mask=msk)


@triton.jit
def _grad_kernel(x_ptr,           # [N, V_local] logits shard (read), strides (stride_xn, stride_xv)
                 g_ptr,           # [N, V_local] dL/dlogits out (may alias x_ptr), strides (stride_gn, stride_gv)
                 tgt_ptr,         # [N] global target ids
                 mraw_ptr, logs_ptr, ent_ptr, dlogp_ptr, dent_ptr,  # [N] fp32: raw max, log S, H, dL/dlogp, dL/dH
                 gscale_ptr,      # [1] fp32 incoming grad of the loss
                 gent_ptr,        # [N] fp32 incoming grad of entropy_N (read only if HAS_GENT)
                 stride_xn, stride_xv, stride_gn, stride_gv, stride_t,
                 v_local, n_real, vocab_start, inv_temp,
                 HAS_GENT: tl.constexpr, BLOCK_V: tl.constexpr, STREAM: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xn
    g_row = g_ptr + row * stride_gn
    mraw = tl.load(mraw_ptr + row)
    logs = tl.load(logs_ptr + row)
    ent = tl.load(ent_ptr + row)
    gs = tl.load(gscale_ptr)
    a = tl.load(dlogp_ptr + row) * gs
    b = tl.load(dent_ptr + row) * gs
    if HAS_GENT:
        b += tl.load(gent_ptr + row)
    tgt = tl.load(tgt_ptr + row * stride_t).to(tl.int64) - vocab_start
    cols0 = tl.arange(0, BLOCK_V)
    for start in range(0, v_local, BLOCK_V):
        cols = start + cols0
        real = cols < n_real
        if STREAM:
            x = tl.load(x_row + cols * stride_xv, mask=real, other=0.0, eviction_policy="evict_first")
        else:
            x = tl.load(x_row + cols * stride_xv, mask=real, other=0.0)
        lp = (x.to(tl.float32) - mraw) * inv_temp - logs           # log p_v, shift before scale
        p = tl.exp(lp)
        g = tl.where(p > 0.0, -p * (a + b * (lp + ent)), 0.0)      # a -inf logit has p = 0 and grad 0, not NaN
        g = tl.where(cols == tgt, g + a, g)
        g = tl.where(real, g, 0.0) * inv_temp
        if STREAM:
            tl.store(g_row + cols * stride_gv, g.to(g_ptr.dtype.element_ty), mask=cols < v_local,
                     cache_modifier=".cs")
        else:
            tl.store(g_row + cols * stride_gv, g.to(g_ptr.dtype.element_ty), mask=cols < v_local)


def _n_real(vocab_start: int, vocab_size: int, v_local: int) -> int:
    return max(0, min(v_local, vocab_size - vocab_start))


def _shard_stats(logits_NV, target_N, vocab_start, vocab_size, temperature) -> torch.Tensor:
    """Pass 1 on this rank's shard -> [N, 4] fp32 (m, s, sz, z_target)."""
    n, v_local = logits_NV.shape
    cfg = _config(logits_NV.device)
    stats = torch.empty((n, 4), dtype=torch.float32, device=logits_NV.device)
    if n:
        _stats_kernel[(n,)](logits_NV, target_N, stats, logits_NV.stride(0), logits_NV.stride(1),
                            target_N.stride(0), _n_real(vocab_start, vocab_size, v_local), vocab_start,
                            1.0 / float(temperature), BLOCK_V=cfg.block_v_stats, STREAM=cfg.stream,
                            num_warps=cfg.warps_stats, num_stages=cfg.stages_stats)
    return stats


def _gather_stats(stats_N4: torch.Tensor, group) -> torch.Tensor:
    """The call's one collective: [N, 4] -> [TP, N, 4]; none at all for no group / one rank."""
    if group is None or dist.get_world_size(group) == 1:
        return stats_N4.unsqueeze(0)
    tp = dist.get_world_size(group)
    n = stats_N4.shape[0]
    out = torch.empty((tp * n, 4), dtype=stats_N4.dtype, device=stats_N4.device)  # gloo wants the flat form
    dist.all_gather_into_tensor(out, stats_N4, group=group)
    return out.view(tp, n, 4)


def _token_math(stats_TN4, *, temperature, per_token=None, eps_lo=_D.eps_lo, eps_hi=_D.eps_hi,
                luffy_gamma=_D.luffy_gamma, entropy_coef=_D.entropy_coef, kl_coef=_D.kl_coef) -> dict[str, torch.Tensor]:
    """Pass 3. per_token=None: only logp/entropy/lse (the old-policy pass)."""
    tp, n, _ = stats_TN4.shape
    dev = stats_TN4.device
    names = ("logp", "ent", "mraw", "logs", "contrib", "dlogp", "dent", "clip", "online")
    k = 9 if per_token is not None else 4
    buf = torch.empty((k, n), dtype=torch.float32, device=dev)  # one allocation, a row per output
    outs = {nm: buf[i] for i, nm in enumerate(names[:k])}
    dummy = outs["logp"]
    if per_token is None:
        outs.update({nm: dummy for nm in names[4:]})
        ins = [dummy] * 7
    else:
        ref = per_token["ref_logp_N"]
        ins = [per_token[nm] if per_token[nm] is not None else dummy
               for nm in ("kind_N", "adv_N", "logp_old_N", "rbar_N", "w_N", "weight_N")]
        ins.append(ref if ref is not None else dummy)
    if n:
        bt = _config(dev).block_t
        _token_kernel[(triton.cdiv(n, bt),)](
            stats_TN4, *ins, *(outs[nm] for nm in names), n, 1.0 / float(temperature), float(eps_lo), float(eps_hi),
            math.log(float(luffy_gamma)), float(entropy_coef), float(kl_coef),
            TP=tp, COMPUTE_LOSS=per_token is not None,
            HAS_KL=per_token is not None and kl_coef != 0.0,
            OLD_IS_LOGP=per_token is not None and per_token["logp_old_N"] is None, BLOCK_T=bt,
            ONLINE=int(TokenKind.ONLINE),
            SHIFT=int(TokenKind.OFFLINE_SHIFT), LUFFY=int(TokenKind.OFFLINE_LUFFY), NLL=int(TokenKind.NLL),
            DPO=int(TokenKind.DPO))
    res = {nm: outs[nm] for nm in names[:k]}
    if k == 9:
        res["clip_online"] = buf[7:9]
    return res


def _shard_grad(logits_NV, grad_NV, target_N, tok, gscale, gent, vocab_start, vocab_size, temperature) -> None:
    """Pass 4: write dL/dlogits of this shard into grad_NV (which may be logits_NV itself)."""
    n, v_local = logits_NV.shape
    if n == 0:
        return
    cfg = _config(logits_NV.device)
    _grad_kernel[(n,)](logits_NV, grad_NV, target_N, tok["mraw"], tok["logs"], tok["ent"], tok["dlogp"],
                       tok["dent"],
                       gscale, gent if gent is not None else tok["ent"],
                       logits_NV.stride(0), logits_NV.stride(1), grad_NV.stride(0), grad_NV.stride(1),
                       target_N.stride(0), v_local, _n_real(vocab_start, vocab_size, v_local), vocab_start,
                       1.0 / float(temperature), HAS_GENT=gent is not None, BLOCK_V=cfg.block_v_grad,
                       STREAM=cfg.stream, num_warps=cfg.warps_grad, num_stages=cfg.stages_grad)


class _RedLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_NV, target_N, per_token: dict, opts: dict):
        vs, vz, temp = opts["vocab_start"], opts["vocab_size"], opts["temperature"]
        stats = _gather_stats(_shard_stats(logits_NV, target_N, vs, vz, temp), opts["group"])
        tok = _token_math(stats, temperature=temp, per_token=per_token, eps_lo=opts["eps_lo"],
                          eps_hi=opts["eps_hi"], luffy_gamma=opts["luffy_gamma"], entropy_coef=opts["entropy_coef"],
                          kl_coef=opts["kl_coef"])
        loss = tok["contrib"].sum()
        counts_2 = tok["clip_online"].sum(1)  # [# clipped online, # online], both weight > 0
        clip_frac = counts_2[0] / counts_2[1].clamp(min=1.0)
        ctx.opts = opts
        ctx.in_place = opts["grad_in_forward"] and logits_NV.requires_grad
        if ctx.in_place:
            one = torch.ones(1, dtype=torch.float32, device=logits_NV.device)
            _shard_grad(logits_NV, logits_NV, target_N, tok, one, None, vs, vz, temp)
            ctx.grad_buf = logits_NV  # not save_for_backward: it now holds the gradient, not the input
        else:
            ctx.tok = {nm: tok[nm] for nm in ("mraw", "logs", "ent", "dlogp", "dent")}
            ctx.save_for_backward(logits_NV, target_N)
        ent = tok["ent"]
        no_grad_outs = [tok["logp"], clip_frac]
        if opts["entropy_coef"] == 0.0 or ctx.in_place:
            no_grad_outs.append(ent)
        ctx.mark_non_differentiable(*no_grad_outs)  # one call: a second one would replace the first
        ctx.set_materialize_grads(False)
        return loss, tok["logp"], ent, clip_frac

    @staticmethod
    def backward(ctx, g_loss, g_logp, g_ent, g_clip):
        del g_logp, g_clip
        if ctx.in_place:
            buf, ctx.grad_buf = ctx.grad_buf, None
            if g_loss is None:
                return torch.zeros_like(buf), None, None, None
            if not bool((g_loss == 1.0).all()):  # one host sync; saves a full pass when the loss is last
                buf.mul_(g_loss.to(buf.dtype))
            return buf, None, None, None
        logits_NV, target_N = ctx.saved_tensors
        o = ctx.opts
        grad = torch.empty(logits_NV.shape, dtype=logits_NV.dtype, device=logits_NV.device)
        gscale = (g_loss if g_loss is not None else torch.zeros(())).to(
            device=logits_NV.device, dtype=torch.float32).reshape(1).contiguous()
        gent = g_ent.to(torch.float32).contiguous() if g_ent is not None else None
        _shard_grad(logits_NV, grad, target_N, ctx.tok, gscale, gent, o["vocab_start"], o["vocab_size"],
                    o["temperature"])
        return grad, None, None, None


def red_loss(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
             temperature: float, kind_N: torch.Tensor, adv_N: torch.Tensor, rbar_N: torch.Tensor,
             w_N: torch.Tensor, weight_N: torch.Tensor, logp_old_N: Optional[torch.Tensor] = None,
             eps_lo: float = _D.eps_lo, eps_hi: float = _D.eps_hi, luffy_gamma: float = _D.luffy_gamma,
             entropy_coef: float = _D.entropy_coef, kl_coef: float = _D.kl_coef,
             ref_logp_N: Optional[torch.Tensor] = None, group=None, grad_in_forward: bool = False) -> RedLossOutput:
    """Fused RED loss over a (vocab-parallel) logits shard; see the module docstring and
    docs/KERNEL_CONTRACT.md (the per-token terms are red_megatron.algo.loss.red_token_loss's). With grad_in_forward=True the logits buffer is overwritten by its
    gradient during the forward (use only when the loss is the logits' last consumer), and
    entropy_N is returned detached (its coefficient's gradient is still in the loss). logp_old_N=None:
    on-policy, the ratio's denominator is this forward's own detached log-prob (r = 1 exactly; what a
    separate no-grad pass over the same weights would give, without that pass)."""
    per_token = dict(kind_N=kind_N, adv_N=adv_N, logp_old_N=logp_old_N, rbar_N=rbar_N, w_N=w_N,
                     weight_N=weight_N, ref_logp_N=ref_logp_N if kl_coef != 0.0 else None)
    check_inputs(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size, temperature=temperature,
                 per_token=per_token, eps_lo=eps_lo, eps_hi=eps_hi, luffy_gamma=luffy_gamma, kl_coef=kl_coef)
    per_token = {k: (v.contiguous() if v is not None else None) for k, v in per_token.items()}
    opts = dict(vocab_start=vocab_start, vocab_size=vocab_size, temperature=float(temperature), eps_lo=eps_lo,
                eps_hi=eps_hi, luffy_gamma=luffy_gamma, entropy_coef=float(entropy_coef),
                kl_coef=float(kl_coef), group=group, grad_in_forward=grad_in_forward)
    loss, logp, ent, clip_frac = _RedLossFn.apply(logits_NV, target_N, per_token, opts)
    return RedLossOutput(loss=loss, logp_N=logp, entropy_N=ent, clip_frac=clip_frac)


@torch.no_grad()
def logprob_entropy(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
                    temperature: float, group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_N, entropy_N), fp32, no grad: the old-policy pass (passes 1-3, one collective)."""
    check_inputs(logits_NV, target_N, vocab_start=vocab_start, vocab_size=vocab_size, temperature=temperature)
    stats = _gather_stats(_shard_stats(logits_NV, target_N, vocab_start, vocab_size, temperature), group)
    tok = _token_math(stats, temperature=temperature)
    return tok["logp"], tok["ent"]
