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
  backward  tiles of C' tokens x B weight rows: for each block W_B of the weight, for each chunk, the
            tile's logits h_C @ W_B^T recomputed, the gradient pass turns them into dL/dlogits (in place
            on the Triton path; the pass takes any column offset), dh_C += g @ W_B, dW_B += g^T @ h_C,
            both summed in fp32; dW_B cast to W's dtype when its block is done. Blocks and chunks run
            in a fixed order (no atomics: bitwise deterministic). B = the whole shard for an fp32 W
            (its gradient is the accumulator; dh then written once per row), else as many blocks as
            keep one block's fp32 dW within CHUNK_BYTES.
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
Memory beyond the inputs and the gradients, per call (``extra_bytes``): one tile's logits (CHUNK_BYTES:
its gradient in place on the Triton path; ~4 fp32 tile temporaries on the torch path), one block's
fp32 dW (<= CHUNK_BYTES) and, with several blocks, dh summed in fp32 [N, D] (the size of the hidden
states, not of the logits), the [N, 4] statistics (x TP after the gather) and per-token fp32 vectors.
With bf16 operands on CUDA the tile products go straight into the fp32 sums (torch.addmm with
out_dtype=float32 where torch has it); else a bf16 product per tile is added (rounded once per tile,
still summed in fp32).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from kernels import _lm_head_torch as _torch_be
from kernels._common import DEFAULT_PARAMS as _D
from kernels._common import RedLossOutput, check_inputs

_rl = importlib.import_module("kernels.red_loss")  # the module (kernels.red_loss the attribute is the function)

__all__ = ["lm_head_red_loss", "lm_head_logprob_entropy", "chunk_rows", "backward_tiles", "extra_bytes", "BACKENDS",
           "CHUNK_BYTES"]

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


def _acc_wide(dst: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """dst += a @ b, dst fp32 (float64 for float64) whatever the operands' dtype."""
    if a.dtype == dst.dtype:
        dst.addmm_(a, b)
        return
    if _ADDMM_OUT_DTYPE[0] and a.is_cuda and dst.dtype == torch.float32:
        try:
            torch.addmm(dst, a, b, out_dtype=torch.float32, out=dst)
            return
        except (RuntimeError, TypeError, NotImplementedError):
            _ADDMM_OUT_DTYPE[0] = False
    dst.add_(a @ b)


def vocab_block_rows(v_local: int, d: int, wide_weight: bool, vocab_block: Optional[int] = None) -> int:
    """Weight rows per backward block: ``vocab_block`` if given; the whole shard for an fp32 weight (its
    gradient is the accumulator); else enough blocks that one block's fp32 dW fits CHUNK_BYTES (a
    multiple of 128 rows)."""
    if vocab_block is not None:
        if not isinstance(vocab_block, int) or vocab_block < 1:
            raise ValueError(f"vocab_block: expected an int >= 1 or None, got {vocab_block!r}")
        return vocab_block
    if wide_weight:
        return v_local
    blocks = -(-v_local * d * 4 // CHUNK_BYTES)  # ceil
    rows = -(-v_local // blocks)
    return min(v_local, -(-rows // 128) * 128)


def backward_tiles(n: int, v_local: int, d: int, itemsize: int, wide_weight: bool,
                   chunk_tokens: Optional[int] = None, vocab_block: Optional[int] = None) -> tuple[int, int]:
    """(weight rows per block, tokens per chunk) of the backward's tiles: a tile's logits fill CHUNK_BYTES."""
    vb = vocab_block_rows(v_local, d, wide_weight, vocab_block)
    return vb, chunk_rows(n, vb, itemsize, chunk_tokens)


def extra_bytes(n: int, d: int, v_local: int, itemsize: int = 2, wide_weight: bool = False) -> int:
    """The op's own buffers at its peak with the default tiles (the backward): one tile of logits, the
    block's fp32 dW and, with several blocks, dh summed in fp32 [N, D] (per-token vectors left out)."""
    vb, c = backward_tiles(n, v_local, d, itemsize, wide_weight)
    tile = min(n, c) * vb * itemsize
    acc = 0 if wide_weight else vb * d * 4
    dh = n * d * 4 if vb < v_local else 0
    fwd = min(n, chunk_rows(n, v_local, itemsize)) * v_local * itemsize
    return max(fwd, tile + acc + dh)


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
        n, (v_local, d) = target_N.shape[0], weight_VD.shape
        wide = torch.float64 if weight_VD.dtype == torch.float64 else torch.float32
        vb, c = backward_tiles(n, v_local, d, head.dtype.itemsize, weight_VD.dtype == wide, o["chunk_tokens"],
                               o["vocab_block"])
        one_block = vb >= v_local
        dW = torch.empty(weight_VD.shape, dtype=weight_VD.dtype, device=dev) if need_w else None
        dh = None  # summed over vocab blocks: in fp32 unless one block writes each row once
        if need_h:
            dh = torch.zeros(hidden_ND.shape, dtype=hidden_ND.dtype if one_block else wide, device=dev)
        grad_fn = _BACKEND[o["backend"]][2]
        for b0 in range(0, v_local, vb):  # fixed order of blocks and chunks: the fp32 sums are the same every run
            b1 = min(v_local, b0 + vb)
            w_b = head.w[b0:b1]
            if need_w:  # a wide weight's gradient is its own accumulator
                dW_b = dW[b0:b1].zero_() if weight_VD.dtype == wide else torch.zeros((b1 - b0, d), dtype=wide, device=dev)
            for s in range(0, n, c):
                e = min(n, s + c)
                h_C = head.h[s:e].to(head.dtype)
                tok_C = {k: v[s:e] for k, v in tok.items()}
                g_CV = grad_fn(h_C @ w_b.t(), target_N[s:e], tok_C, gscale, gent[s:e] if gent is not None else None,
                               o["vocab_start"] + b0, o["vocab_size"], o["temperature"]).to(head.dtype)
                if need_h and one_block and head.dtype == dh.dtype:
                    torch.mm(g_CV, w_b, out=dh[s:e])  # straight into its rows (a row block of dh is contiguous)
                elif need_h and one_block:
                    dh[s:e] = g_CV @ w_b
                elif need_h:
                    _acc_wide(dh[s:e], g_CV, w_b)
                if need_w:
                    _acc_wide(dW_b, g_CV.t(), h_C)
                del g_CV
            if need_w and weight_VD.dtype != wide:
                dW[b0:b1] = dW_b
                del dW_b
        if need_h and dh.dtype != hidden_ND.dtype:
            dh = dh.to(hidden_ND.dtype)
        return dh, dW, None, None, None


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
                     vocab_block: Optional[int] = None, backend: str = "triton") -> RedLossOutput:
    """red_loss(hidden_ND @ weight_VD^T, ...) without the logits (module docstring): the same
    outputs, the gradient to hidden_ND (this shard's part) and weight_VD. fp32_matmul: logits from
    fp32 operands (policy.lm_head_fp32). chunk_tokens / vocab_block: the tiles' tokens and weight rows
    (None: CHUNK_BYTES of logits a tile). backend: "triton" (kernels/red_loss.py's passes) or "torch"."""
    per_token = dict(kind_N=kind_N, adv_N=adv_N, logp_old_N=logp_old_N, rbar_N=rbar_N, w_N=w_N,
                     weight_N=weight_N, ref_logp_N=ref_logp_N if kl_coef != 0.0 else None)
    _check(hidden_ND, weight_VD, target_N, backend, fp32_matmul, vocab_start=vocab_start, vocab_size=vocab_size,
           temperature=temperature, per_token=per_token, eps_lo=eps_lo, eps_hi=eps_hi, luffy_gamma=luffy_gamma,
           kl_coef=kl_coef)
    per_token = {k: (v.contiguous() if v is not None else None) for k, v in per_token.items()}
    itemsize = 4 if fp32_matmul else hidden_ND.element_size()
    vocab_block_rows(1, 1, False, vocab_block)  # a bad value fails here, not in the backward
    opts = dict(vocab_start=vocab_start, vocab_size=vocab_size, temperature=float(temperature), group=group,
                backend=backend, fp32_matmul=fp32_matmul, chunk_tokens=chunk_tokens, vocab_block=vocab_block,
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
