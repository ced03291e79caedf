"""Shared by the RED loss kernel and its reference: the output type and input checks.

Kept apart so that `red_loss.py` (Triton) and `red_loss_reference.py` (plain PyTorch) validate
their inputs identically and return the same type; a mismatch in input handling between a
kernel and its reference is a classic source of tests that pass for the wrong reason.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

# The per-token kinds and the loss's default scalars are the algorithm's (docs/KERNEL_CONTRACT.md):
# defined once in red_megatron.algo.contract, a torch-only module (the one red_megatron import here).
from red_megatron.algo.contract import DEFAULT_PARAMS, KINDS, TokenKind, check_loss_scalar  # noqa: E402,F401


class RedLossOutput(NamedTuple):
    """loss: scalar with grad to the logits; logp_N: detached fp32; entropy_N: fp32, detached unless
    entropy_coef != 0 (then differentiable, except with grad_in_forward); clip_frac: scalar."""

    loss: torch.Tensor
    logp_N: torch.Tensor
    entropy_N: torch.Tensor
    clip_frac: torch.Tensor


def check_inputs(logits_NV: torch.Tensor, target_N: torch.Tensor, *, vocab_start: int, vocab_size: int,
                 temperature: float, per_token: dict[str, Optional[torch.Tensor]] | None = None,
                 eps_lo: float = DEFAULT_PARAMS.eps_lo, eps_hi: float = DEFAULT_PARAMS.eps_hi,
                 luffy_gamma: float = DEFAULT_PARAMS.luffy_gamma, kl_coef: float = DEFAULT_PARAMS.kl_coef) -> None:
    """One clear ValueError naming the tensor/field and what was expected. No data-dependent checks
    (they would synchronise the GPU on every call)."""
    if logits_NV.dim() != 2:
        raise ValueError(f"logits_NV: expected a 2-D [N, V_local] tensor, got shape {tuple(logits_NV.shape)}")
    if logits_NV.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"logits_NV: expected fp16/bf16/fp32/fp64, got {logits_NV.dtype}")
    n, v_local = logits_NV.shape
    if v_local < 1:
        raise ValueError("logits_NV: the local vocabulary shard is empty (V_local must be >= 1)")
    if target_N.dim() != 1 or target_N.shape[0] != n:
        raise ValueError(f"target_N: expected shape [{n}] (one global vocab id per logits row), "
                         f"got {tuple(target_N.shape)}")
    if target_N.dtype.is_floating_point or target_N.dtype == torch.bool:
        raise ValueError(f"target_N: expected an integer tensor of global vocab ids, got {target_N.dtype}")
    if not isinstance(vocab_start, int) or vocab_start < 0:
        raise ValueError(f"vocab_start: expected an int >= 0, got {vocab_start!r}")
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size: expected an int >= 1, got {vocab_size!r}")
    # the contract's ranges (the kernels accept any entropy_coef sign: the loss math is tested with both)
    for name, v in (("temperature", temperature), ("eps_lo", eps_lo), ("eps_hi", eps_hi), ("luffy_gamma", luffy_gamma)):
        check_loss_scalar(name, v, where="red_loss")
    for name, t in (per_token or {}).items():
        if t is None:
            if name == "ref_logp_N" and kl_coef != 0.0:
                raise ValueError("ref_logp_N: required when kl_coef != 0")
            continue
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"{name}: expected shape [{n}] (one value per logits row), got {tuple(t.shape)}")
        if t.device != logits_NV.device:
            raise ValueError(f"{name}: expected device {logits_NV.device}, got {t.device}")
        if name == "kind_N" and (t.dtype.is_floating_point or t.dtype == torch.bool):
            raise ValueError(f"kind_N: expected an integer tensor with values in {KINDS}, got {t.dtype}")
    if target_N.device != logits_NV.device:
        raise ValueError(f"target_N: expected device {logits_NV.device}, got {target_N.device}")
