"""Triton kernels of red-megatron, each beside its pure-PyTorch reference.

`red_loss` / `logprob_entropy` (kernels/red_loss.py): the fused vocab-parallel log-prob + entropy +
RED loss, forward and backward, Triton (runs on GPU, and on CPU under TRITON_INTERPRET=1).
`red_loss_reference` / `reference_logprob_entropy` (kernels/red_loss_reference.py): the
plain-autograd references with the same signatures, shared by tests and benchmarks.
"""
from kernels._common import KINDS, NLL, OFFLINE_LUFFY, OFFLINE_SHIFT, ONLINE, RedLossOutput
from kernels.red_loss import logprob_entropy, red_loss
from kernels.red_loss_reference import logprob_entropy as reference_logprob_entropy
from kernels.red_loss_reference import red_loss_reference

__all__ = ["red_loss", "logprob_entropy", "red_loss_reference", "reference_logprob_entropy", "RedLossOutput",
           "ONLINE", "OFFLINE_SHIFT", "OFFLINE_LUFFY", "NLL", "KINDS"]
