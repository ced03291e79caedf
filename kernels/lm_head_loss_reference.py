"""Reference of kernels/lm_head_loss.py: the LM head as one matmul, then red_loss_reference.

Obviously right rather than lean: it materialises the [N, V_local] logits (and, in the reference,
the full-vocabulary fp32 log-softmax), so autograd gives dL/dhidden and dL/dweight through plain
F.linear. Shared by the tests and the benchmark (the benchmark's "matmul + red_loss" baseline is
the same matmul followed by the Triton red_loss). fp32_matmul upcasts both operands, as the policy's
lm_head_fp32 does (model.fp32_lm_head).
"""
from __future__ import annotations

from typing import Optional

import torch

from kernels.red_loss_reference import logprob_entropy as _ref_logprob_entropy
from kernels.red_loss_reference import red_loss_reference

__all__ = ["lm_head_logits", "lm_head_red_loss_reference", "lm_head_logprob_entropy_reference"]


def lm_head_logits(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, fp32_matmul: bool = False) -> torch.Tensor:
    """[N, V_local] logits of this rank's shard (what ColumnParallelLinear computes)."""
    if fp32_matmul and hidden_ND.dtype != torch.float64:
        return torch.nn.functional.linear(hidden_ND.float(), weight_VD.float())
    return torch.nn.functional.linear(hidden_ND, weight_VD)


def lm_head_red_loss_reference(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, target_N: torch.Tensor, *,
                               fp32_matmul: bool = False, chunk_tokens: Optional[int] = None,
                               backend: Optional[str] = None, **kw):
    """Same signature as kernels.lm_head_loss.lm_head_red_loss (chunk_tokens and backend are accepted
    and ignored); the rest of the keywords are red_loss_reference's."""
    del chunk_tokens, backend
    return red_loss_reference(lm_head_logits(hidden_ND, weight_VD, fp32_matmul), target_N, **kw)


def lm_head_logprob_entropy_reference(hidden_ND: torch.Tensor, weight_VD: torch.Tensor, target_N: torch.Tensor, *,
                                      fp32_matmul: bool = False, chunk_tokens: Optional[int] = None,
                                      backend: Optional[str] = None, **kw):
    del chunk_tokens, backend
    with torch.no_grad():
        return _ref_logprob_entropy(lm_head_logits(hidden_ND, weight_VD, fp32_matmul), target_N, **kw)
