"""The LM head fused into the RED loss: hidden states in, logits only a token chunk at a time.

Inputs: hidden states h [N, D], this rank's LM-head weight shard W [V_local, D] (global columns
vocab_start .. vocab_start + V_local; ids >= vocab_size are padding), the contract's per-token
terms. Outputs: red_loss's (loss, logp_N, entropy_N, clip_frac) and, in the backward, dL/dh and
dL/dW. No [N, V_local] tensor ever exists: the logits of C tokens at a time.

Passes (C = chunk_tokens; the logits side of each chunk is kernels/red_loss.py's Triton passes, or
their PyTorch twins in kernels/_lm_head_torch.py with backend="torch"):
  forward   for each chunk: logits_CV = h_C @ W^T (cuBLAS; fp32 operands with fp32_matmul), the
            stats pass -> stats_N4 rows of the chunk; the chunk's logits are dropped.
            ONE all_gather of stats_N4 over `group` (none for no group / one rank), then the token
            pass over all N: logp, H, the loss and the per-token partials a = dL/dlogp, b = dL/dH.
  backward  for each chunk again: logits_CV = h_C @ W^T recomputed, the gradient pass turns it into
            dL/dlogits_CV (in place on the Triton path), dh_C = g_CV @ W, dW += g_CV^T @ h_C into one
            fp32 accumulator, chunk after chunk in a fixed order (no atomics: bitwise deterministic).
dh is this shard's part: the TP sum belongs to the caller's region op (Megatron's
copy_to_tensor_model_parallel_region / the sequence-parallel gather's reduce-scatter), as with
ColumnParallelLinear. Saved for backward: h, W, the targets and 6 fp32 numbers per token.

Why token chunks through cuBLAS, and the recompute (decided here, 2026-12-06):
- The single all-gather fixes the shape of the algorithm. A chunk's gradient needs its rows'
  merged statistics from every TP rank, so either each chunk gathers its own statistics (N/C
  collectives in the forward) or all chunks' statistics are gathered once and the logits are
  recomputed for the gradient. We keep one collective: 4 GEMMs of 2·N·V_local·D flops (one
  forward, recompute + two backward) instead of the unfused 3, i.e. +1/3 of the head's flops.
- Computing the gradient in the forward (as red_loss's grad_in_forward) would cost the same 4
  GEMMs here and hold dh [N, D] and an fp32 dW [V_local, D] from the forward to the backward for
  every micro-batch in flight (PP's 1F1B holds several): the recompute sits in the backward.
- A token x vocabulary-tile kernel doing matmul + online softmax in one pass needs a hand-written
  GEMM that matches cuBLAS (640-770 TFLOP/s bf16 on Hopper, per Liger's fused linear CE) on both
  triton 3.6 and 3.9: not measurable here (no GPU lent to this task). Token chunks reuse cuBLAS
  and the already-measured Triton passes unchanged, and run on the CPU through the same code.
Memory beyond the inputs and dh, per call: one chunk's logits C x V_local (its gradient in place on
the Triton path; ~4 fp32 chunk temporaries on the torch path), the [N, 4] statistics (x TP after the
gather) and per-token fp32 vectors, plus the fp32 dW accumulator [V_local, D] when W is not fp32
(fp32 accumulation across chunks; cast to W's dtype once at the end). With a bf16 W on CUDA the
chunk products go straight into it (torch.addmm with out_dtype=float32 where torch has it); else a
bf16 product per chunk is added (rounded once per chunk, still summed in fp32).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from kernels import _lm_head_torch as _torch_be
from kernels._common import DEFAULT_PARAMS as _D
from kernels._common import RedLossOutput, check_inputs

_rl = importlib.import_module("kernels.red_loss")  # the module (kernels.red_loss the attribute is the function)

__all__ = ["lm_head_red_loss", "lm_head_logprob_entropy", "chunk_rows", "BACKENDS", "CHUNK_BYTES"]

BACKENDS = ("triton", "torch")
# Default chunk: the tokens whose logits fill this many bytes (768 tokens of bf16 at V_local=151,936, 1,664 at
# TP=2, 7,040 at TP=8): GEMMs of >= 0.3 TFLOP at D >= 1,536 for cuBLAS, and small next to the fp32 dW
# accumulator, so that the fused head pays off from a few thousand tokens per rank on.
CHUNK_BYTES = 256 << 20


def chunk_rows(n: int, v_local: int, itemsize: int, chunk_tokens: Optional[int] = None) -> int:
    """Tokens per chunk: ``chunk_tokens`` if given, else CHUNK_BYTES of logits, a multiple of 128."""
    if chunk_tokens is not None:
        if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens: expected an int >= 1 or None, got {chunk_tokens!r}")
        return chunk_tokens
    return max(128, CHUNK_BYTES // max(1, v_local * itemsize) // 128 * 128)


# --- the two backends of a chunk's logits side: stats, token math, gradient ------------------------------
def _triton_stats(logits_CV, target_C, vs, vz, temp):
    return _rl._shard_stats(logits_CV, target_C, vs, vz, temp)


def _triton_tokens(stats_TN4, temp, per_token, params):
    if per_token is None:
        return _rl._token_math(stats_TN4, temperature=temp)
    tok = _rl._token_math(stats_TN4, temperature=temp, per_token=per_token, **params)
    counts = tok["clip_online"].sum(1)  # [# clipped online, # online], weight > 0
    tok["loss"] = tok["contrib"].sum()
    tok["clip_frac"] = counts[0] / counts[1].clamp(min=1.0)
    return tok


def _triton_grad(logits_CV, target_C, tok_C, gscale, gent_C, vs, vz, temp):
    _rl._shard_grad(logits_CV, logits_CV, target_C, tok_C, gscale, gent_C, vs, vz, temp)
    return logits_CV  # the chunk's logits buffer now holds its gradient


_BACKEND = {"triton": (_triton_stats, _triton_tokens, _triton_grad),
            "torch": (_torch_be.stats, _torch_be.tokens, _torch_be.grad)}
_ADDMM_OUT_DTYPE = [True]  # cleared once torch says addmm(out_dtype=float32) is not there (CPU, old torch)


def _acc_fp32(dW_VD: torch.Tensor, gT_VC: torch.Tensor, h_CD: torch.Tensor) -> None:
    """dW += gT @ h with an fp32 accumulator whatever the operands' dtype."""
    if gT_VC.dtype == torch.float32:
        dW_VD.addmm_(gT_VC, h_CD)
        return
    if _ADDMM_OUT_DTYPE[0] and gT_VC.is_cuda:
        try:
            torch.addmm(dW_VD, gT_VC, h_CD, out_dtype=torch.float32, out=dW_VD)
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _ADDMM_OUT_DTYPE[0] = False
    dW_VD.add_(gT_VC @ h_CD)


class _Head:
    """The matmul side: operands in the chunk dtype (fp32 with fp32_matmul), the weight cast once."""

    def __init__(self, hidden_ND, weight_VD, fp32_matmul: bool):
        self.h = hidden_ND
        self.dtype = torch.float32 if fp32_matmul and hidden_ND.dtype != torch.float64 else hidden_ND.dtype
        self.w = weight_VD.to(self.dtype)  # no copy unless upcast (the unfused fp32 head upcasts it too)

    def logits(self, s: int, e: int) -> torch.Tensor:
        return self.h[s:e].to(self.dtype) @ self.w.t()  # [C, V_local], contiguous


def _forward_stats(head: _Head, target_N, opts) -> torch.Tensor:
    """Pass 1 over every chunk -> this rank's stats_N4; then the call's one collective."""
    stats_fn = _BACKEND[opts["backend"]][0]
    n = target_N.shape[0]
    stats = torch.empty((n, 4), dtype=torch.float32, device=target_N.device)
    c = opts["chunk"]
    for s in range(0, n, c):
        e = min(n, s + c)
        stats[s:e] = stats_fn(head.logits(s, e), target_N[s:e], opts["vocab_start"], opts["vocab_size"],
                              opts["temperature"])
    return _rl._gather_stats(stats, opts["group"])


class _LMHeadLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_ND, weight_VD, target_N, per_token: dict, opts: dict):
        head = _Head(hidden_ND, weight_VD, opts["fp32_matmul"])
        stats = _forward_stats(head, target_N, opts)
        tok = _BACKEND[opts["backend"]][1](stats, opts["temperature"], per_token, opts["params"])
        ctx.opts = opts
        ctx.tok = {nm: tok[nm] for nm in ("mraw", "logs", "ent", "dlogp", "dent")}
        ctx.save_for_backward(hidden_ND, weight_VD, target_N)
        no_grad = [tok["logp"], tok["clip_frac"]]
        if opts["params"]["entropy_coef"] == 0.0:
            no_grad.append(tok["ent"])
        ctx.mark_non_differentiable(*no_grad)
        ctx.set_materialize_grads(False)
        return tok["loss"], tok["logp"], tok["ent"], tok["clip_frac"]

    @staticmethod
    def backward(ctx, g_loss, g_logp, g_ent, g_clip):
        del g_logp, g_clip
        hidden_ND, weight_VD, target_N = ctx.saved_tensors
        o, tok = ctx.opts, ctx.tok
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        head = _Head(hidden_ND, weight_VD, o["fp32_matmul"])
        dev = hidden_ND.device
        gscale = (g_loss if g_loss is not None else torch.zeros((), device=dev)).to(
            device=dev, dtype=torch.float32).reshape(1).contiguous()
        gent = g_ent.to(torch.float32).contiguous() if g_ent is not None else None
        dh = torch.empty(hidden_ND.shape, dtype=hidden_ND.dtype, device=dev) if need_h else None
        acc = torch.float64 if weight_VD.dtype == torch.float64 else torch.float32
        dW = torch.zeros(weight_VD.shape, dtype=acc, device=dev) if need_w else None
        grad_fn = _BACKEND[o["backend"]][2]
        n, c = target_N.shape[0], o["chunk"]
        for s in range(0, n, c):  # fixed chunk order: the fp32 dW sum is the same every run
            e = min(n, s + c)
            tok_C = {k: v[s:e] for k, v in tok.items()}
            g_CV = grad_fn(head.logits(s, e), target_N[s:e], tok_C, gscale, gent[s:e] if gent is not None else None,
                           o["vocab_start"], o["vocab_size"], o["temperature"]).to(head.dtype)
            if need_h and head.dtype == dh.dtype:
                torch.mm(g_CV, head.w, out=dh[s:e])  # straight into its rows (a row block of dh is contiguous)
            elif need_h:
                dh[s:e] = g_CV @ head.w
            if need_w:
                _acc_fp32(dW, g_CV.t(), head.h[s:e].to(head.dtype))
            del g_CV
        return dh, (dW.to(weight_VD.dtype) if need_w else None), None, None, None


def _check(hidden_ND, weight_VD, target_N, backend, fp32_matmul, **kw):
    if hidden_ND.dim() != 2 or weight_VD.dim() != 2 or hidden_ND.shape[1] != weight_VD.shape[1]:
        raise ValueError(f"hidden_ND [N, D] and weight_VD [V_local, D]: expected 2-D tensors with the same D, got "
                         f"{tuple(hidden_ND.shape)} and {tuple(weight_VD.shape)}")
    if hidden_ND.dtype != weight_VD.dtype:
        raise ValueError(f"weight_VD: expected the dtype of hidden_ND ({hidden_ND.dtype}), got {weight_VD.dtype} "
                         f"(fp32_matmul=True upcasts both per chunk)")
    if weight_VD.device != hidden_ND.device:
        raise ValueError(f"weight_VD: expected device {hidden_ND.device}, got {weight_VD.device}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if not isinstance(fp32_matmul, bool):
        raise ValueError(f"fp32_matmul: expected a bool, got {fp32_matmul!r}")
    # the logits' shape without the logits: a zero-stride view, no memory
    check_inputs(hidden_ND.new_empty(()).expand(hidden_ND.shape[0], weight_VD.shape[0]), target_N, **kw)


def lm_head_red_loss(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int,
                     vocab_size: int, temperature: float, kind_N: torch.Tensor, adv_N: torch.Tensor,
                     rbar_N: torch.Tensor, w_N: torch.Tensor, weight_N: torch.Tensor,
                     logp_old_N: Optional[torch.Tensor] = None, eps_lo: float = _D.eps_lo, eps_hi: float = _D.eps_hi,
                     luffy_gamma: float = _D.luffy_gamma, entropy_coef: float = _D.entropy_coef,
                     kl_coef: float = _D.kl_coef, ref_logp_N: Optional[torch.Tensor] = None, group=None,
                     fp32_matmul: bool = False, chunk_tokens: Optional[int] = None,
                     backend: str = "triton") -> RedLossOutput:
    """red_loss(hidden_ND @ weight_VD^T, ...) without the logits (module docstring): the same
    outputs, the gradient to hidden_ND (this shard's part) and weight_VD. fp32_matmul: logits from
    fp32 operands (policy.lm_head_fp32). backend: "triton" (kernels/red_loss.py's passes) or "torch"."""
    per_token = dict(kind_N=kind_N, adv_N=adv_N, logp_old_N=logp_old_N, rbar_N=rbar_N, w_N=w_N,
                     weight_N=weight_N, ref_logp_N=ref_logp_N if kl_coef != 0.0 else None)
    _check(hidden_ND, weight_VD, target_N, backend, fp32_matmul, vocab_start=vocab_start, vocab_size=vocab_size,
           temperature=temperature, per_token=per_token, eps_lo=eps_lo, eps_hi=eps_hi, luffy_gamma=luffy_gamma,
           kl_coef=kl_coef)
    per_token = {k: (v.contiguous() if v is not None else None) for k, v in per_token.items()}
    itemsize = 4 if fp32_matmul else hidden_ND.element_size()
    opts = dict(vocab_start=vocab_start, vocab_size=vocab_size, temperature=float(temperature), group=group,
                backend=backend, fp32_matmul=fp32_matmul,
                chunk=chunk_rows(hidden_ND.shape[0], weight_VD.shape[0], itemsize, chunk_tokens),
                params=dict(eps_lo=float(eps_lo), eps_hi=float(eps_hi), luffy_gamma=float(luffy_gamma),
                            entropy_coef=float(entropy_coef), kl_coef=float(kl_coef)))
    loss, logp, ent, clip_frac = _LMHeadLossFn.apply(hidden_ND, weight_VD, target_N, per_token, opts)
    return RedLossOutput(loss=loss, logp_N=logp, entropy_N=ent, clip_frac=clip_frac)


@torch.no_grad()
def lm_head_logprob_entropy(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, target_N: torch.Tensor, *,
                            vocab_start: int, vocab_size: int, temperature: float, group=None,
                            fp32_matmul: bool = False, chunk_tokens: Optional[int] = None,
                            backend: str = "triton") -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_N, entropy_N) fp32, no grad: the old-policy pass (one GEMM per chunk, one collective)."""
    _check(hidden_ND, weight_VD, target_N, backend, fp32_matmul, vocab_start=vocab_start, vocab_size=vocab_size,
           temperature=temperature)
    itemsize = 4 if fp32_matmul else hidden_ND.element_size()
    opts = dict(vocab_start=vocab_start, vocab_size=vocab_size, temperature=float(temperature), group=group,
                backend=backend, chunk=chunk_rows(hidden_ND.shape[0], weight_VD.shape[0], itemsize, chunk_tokens))
    stats = _forward_stats(_Head(hidden_ND, weight_VD, fp32_matmul), target_N, opts)
    tok = _BACKEND[backend][1](stats, float(temperature), None, None)
    return tok["logp"], tok["ent"]
