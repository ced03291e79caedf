"""Core attention on ``torch.nn.functional.scaled_dot_product_attention`` for the local (non-TE) spec.

Why: megatron's local ``DotProductAttention`` materialises the B×heads×T×T score matrix in fp32
(the Qwen2.5-1.5B shape ran out of 80 GB at 4×2048 tokens, GPU.md) and rejects packed sequences.
Without transformer-engine, SDPA gives the flash / cuDNN / memory-efficient kernels on the GPU and
an exact math kernel on the CPU, with O(T) memory.

It is a drop-in for the ``core_attention`` slot of megatron's ``SelfAttentionSubmodules``
(same constructor and ``forward`` signature in 0.16 and 0.19):

- ``sbhd`` input, query [S, B, Hq, D], key/value [S, B, Hkv, D] -> [S, B, Hq·D]. Causal via
  ``is_causal`` (no mask tensor is built) unless megatron hands a boolean mask (True = masked),
  which is inverted into SDPA's convention (True = attend).
- ``thd`` (packed) input, query [T, Hq, D] with ``packed_seq_params.cu_seqlens_q``: the
  block-diagonal causal attention is computed one sequence at a time (each a causal SDPA call on
  its own slice), so no T×T mask and no cross-sequence attention; -> [T, Hq·D].
- GQA: ``enable_gqa`` where the kernel supports it (CPU math, CUDA flash in fp16/bf16), else K/V
  are repeated per group.
- Context parallelism (``context_parallel_size > 1``, THD only): this rank holds 2 of each
  sequence's 2·CP chunks; K/V are all-gathered in the CP group (``context_parallel.py``).

Heads are per TP rank (megatron has already split them). Dropout follows config.attention_dropout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias as AttentionBias
import torch.distributed as dist
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from red_megatron.policy.context_parallel import cp_attention_thd

_BACKENDS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def _sdpa_context(backend: str | None):
    import contextlib

    if backend is None or backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend not in _BACKENDS:
        raise ValueError(f"sdpa backend must be one of {sorted(_BACKENDS)} or 'auto', got {backend!r}")
    return sdpa_kernel([getattr(SDPBackend, _BACKENDS[backend])])


class SDPAttention(MegatronModule):
    """Megatron core attention on torch SDPA (causal, GQA, packed THD)."""

    backend: str | None = None  # "flash" | "cudnn" | "efficient" | "math" | None (torch chooses)

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str = "self",
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None, **kwargs):
        super().__init__(config=config)
        self.cp_size = int(getattr(config, "context_parallel_size", 1) or 1)
        self.cp_group = getattr(pg_collection, "cp", None) if pg_collection is not None else None
        if self.cp_size > 1 and self.cp_group is None:
            raise ValueError("SDPAttention: context_parallel_size > 1 needs megatron's pg_collection with a cp group")
        tp = config.tensor_model_parallel_size
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        self.heads = config.num_attention_heads // tp
        self.groups = (config.num_query_groups or config.num_attention_heads) // tp
        self.head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _attend(self, q, k, v, *, causal: bool, mask=None):
        """q [B, Hq, S, D], k/v [B, Hkv, S, D] -> [B, Hq, S, D]."""
        gqa = self.heads != self.groups
        native_gqa = gqa and (q.device.type != "cuda" or q.dtype in (torch.float16, torch.bfloat16)) \
            and self.backend in (None, "auto", "flash", "math") \
            and not (isinstance(mask, AttentionBias) and q.device.type == "cuda")  # CP's lower-right causal bias
        if gqa and not native_gqa:
            rep = self.heads // self.groups
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        kw = {"enable_gqa": True} if native_gqa else {}
        with _sdpa_context(self.backend):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0,
                is_causal=causal and mask is None, scale=self.softmax_scale, **kw)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None, **kwargs):
        if attention_bias is not None:
            raise ValueError("SDPAttention: attention_bias is not supported")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        if packed_seq_params is not None and getattr(packed_seq_params, "qkv_format", "sbhd") == "thd":
            return self._forward_thd(query, key, value, packed_seq_params, causal)
        if query.dim() != 4:
            raise ValueError(f"SDPAttention: query must be [S, B, H, D] (or THD with packed_seq_params), "
                             f"got {tuple(query.shape)}")
        S, B = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [B, H, S, D]
        mask = None
        if attention_mask is not None and mask_type != AttnMaskType.causal:
            mask = ~attention_mask.to(torch.bool)  # megatron: True = masked; SDPA: True = attend
        out = self._attend(q, k, v, causal=causal, mask=mask)  # [B, Hq, S, D]
        return out.permute(2, 0, 1, 3).reshape(S, B, self.heads * self.head_dim)

    def _forward_thd(self, query, key, value, psp, causal: bool):
        if query.dim() == 4:  # [T, 1, H, D]
            query, key, value = (t.squeeze(1) for t in (query, key, value))
        cu_q = psp.cu_seqlens_q_padded if getattr(psp, "cu_seqlens_q_padded", None) is not None else psp.cu_seqlens_q
        cu_k = psp.cu_seqlens_kv_padded if getattr(psp, "cu_seqlens_kv_padded", None) is not None else psp.cu_seqlens_kv
        bq, bk = cu_q.tolist(), cu_k.tolist()
        if bq != bk:
            raise ValueError("SDPAttention: THD self-attention needs cu_seqlens_q == cu_seqlens_kv")
        T = query.shape[0]
        if self.cp_size > 1:  # global boundaries, this rank's 2 chunks of each sequence
            if not causal:
                raise ValueError("SDPAttention: context parallelism is implemented for causal attention only")
            if bq[0] != 0 or bq[-1] > T * self.cp_size:
                raise ValueError(f"SDPAttention: cu_seqlens {bq} do not fit {T} local tokens × cp={self.cp_size}")
            out = cp_attention_thd(lambda q, k, v, m: self._attend(q, k, v, causal=False, mask=m), query, key, value,
                                   bq, cp_rank=dist.get_rank(self.cp_group), cp_size=self.cp_size,
                                   group=self.cp_group)
            return out.reshape(T, self.heads * self.head_dim)
        if bq[0] != 0 or bq[-1] > T:
            raise ValueError(f"SDPAttention: cu_seqlens {bq} do not fit a packed row of {T} tokens")
        out = query.new_zeros(T, self.heads, self.head_dim)
        for s, e in zip(bq[:-1], bq[1:]):
            if e <= s:
                continue
            q, k, v = (t[s:e].transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # [1, H, L, D]
            out[s:e] = self._attend(q, k, v, causal=causal)[0].transpose(0, 1)
        return out.reshape(T, self.heads * self.head_dim)


def sdpa_attention_class(backend: str | None = None) -> type:
    """SDPAttention pinned to one SDPA backend (megatron instantiates the class itself)."""
    if backend in (None, "auto"):
        return SDPAttention
    if backend not in _BACKENDS:
        raise ValueError(f"sdpa backend must be one of {sorted(_BACKENDS)} or 'auto', got {backend!r}")
    return type(f"SDPAttention_{backend}", (SDPAttention,), {"backend": backend})
