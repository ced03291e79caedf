"""The project's own RMSNorm for megatron's norm slots, with sequence parallelism.

megatron-core's local spec falls back to ``WrappedTorchNorm`` without Apex/TE, which refuses
``sequence_parallel=True``. Under sequence parallelism each TP rank normalises its own slice of
the sequence, so the (replicated) weight's gradient is partial on every rank: megatron's
``finalize_model_grads`` all-reduces over the TP group every parameter marked
``sequence_parallel``, which this module sets from the config. The maths is torch's
``rms_norm`` (the kernel ``torch.nn.RMSNorm`` runs), so results are bit-equal to the fallback.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class ProjectRMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        super().__init__()
        if getattr(config, "normalization", "RMSNorm") != "RMSNorm":
            raise ValueError(f"ProjectRMSNorm: normalization must be 'RMSNorm', got {config.normalization!r}")
        self.hidden_size, self.eps = int(hidden_size), float(eps)
        self.weight = torch.nn.Parameter(torch.ones(self.hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = bool(config.sequence_parallel)  # grads all-reduced over TP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
