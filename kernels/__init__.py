"""Triton kernels of red-megatron, each beside its pure-PyTorch reference.

`red_loss` is the fused vocab-parallel log-prob + entropy + RED loss (forward and backward);
`red_loss_reference` / `reference_logprob_entropy` are the plain-autograd references that tests and
benchmarks compare it with. TEMPORARY: until kernels/red_loss.py (Triton) lands, `red_loss` and
`logprob_entropy` ARE the reference (same signature, same results, just slow and memory-hungry).
"""
from kernels._common import KINDS, NLL, OFFLINE_LUFFY, OFFLINE_SHIFT, ONLINE, RedLossOutput
from kernels.red_loss_reference import logprob_entropy as reference_logprob_entropy
from kernels.red_loss_reference import red_loss_reference

red_loss = red_loss_reference  # temporary, see the module docstring
logprob_entropy = reference_logprob_entropy

__all__ = ["red_loss", "logprob_entropy", "red_loss_reference", "reference_logprob_entropy", "RedLossOutput",
           "ONLINE", "OFFLINE_SHIFT", "OFFLINE_LUFFY", "NLL", "KINDS"]
