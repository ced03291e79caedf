"""Triton kernels of red-megatron, each beside its pure-PyTorch reference.

`red_loss` / `logprob_entropy` (kernels/red_loss.py): the fused vocab-parallel log-prob + entropy +
RED loss, forward and backward, Triton (runs on GPU, and on CPU under TRITON_INTERPRET=1).
`lm_head_red_loss` / `lm_head_logprob_entropy` (kernels/lm_head_loss.py): the same loss with the LM head
inside, from hidden states and the head's weight shard, the logits a token chunk at a time (the Triton
passes above on each chunk, or their PyTorch twins); reference: kernels/lm_head_loss_reference.py.
`red_loss_reference` / `reference_logprob_entropy` (kernels/red_loss_reference.py): the
plain-autograd references with the same signatures, shared by tests and benchmarks: the logits side
(log-prob + entropy) composed with red_megatron.algo's one per-token formula.

Imports: torch, triton, torch.distributed, and red_megatron.algo's torch-only contract and loss
(the token kinds and the per-token formula are the algorithm's, docs/KERNEL_CONTRACT.md); never
megatron, vllm or any other part of red_megatron.
"""
from kernels._common import KINDS, RedLossOutput, TokenKind
from kernels.lm_head_loss import lm_head_logprob_entropy, lm_head_red_loss
from kernels.red_loss import logprob_entropy, red_loss
from kernels.red_loss_reference import logprob_entropy as reference_logprob_entropy
from kernels.red_loss_reference import red_loss_reference

ONLINE, OFFLINE_SHIFT, OFFLINE_LUFFY, NLL, DPO = TokenKind  # the algorithm's members by name (no new codes)

__all__ = ["red_loss", "logprob_entropy", "lm_head_red_loss", "lm_head_logprob_entropy", "red_loss_reference",
           "reference_logprob_entropy", "RedLossOutput", "TokenKind", "ONLINE", "OFFLINE_SHIFT", "OFFLINE_LUFFY", "NLL",
           "DPO", "KINDS"]
