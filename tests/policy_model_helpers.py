"""Shared by the policy model/convert tests: tiny HF checkpoints and worker functions for the dist2 pool.

The worker functions are top-level so the pool can pickle them by reference. Each builds the
Megatron model from the checkpoint's config.json, loads its safetensors through
``red_megatron.policy.convert`` and tears megatron's parallel state down before returning.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.dist_pool import megatron_parallel

# name -> (arch, tie_word_embeddings, extra config.json fields)
TINY = {
    "qwen2_untied": ("qwen2", False, {}),
    "qwen2_tied": ("qwen2", True, {}),
    # llama3 scaling with a short original context so it changes most frequencies of head_dim 32
    "llama": ("llama", False, {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                               "rope_theta": 500000.0}),
    "qwen3": ("qwen3", False, {}),
}


def make_tiny(name: str, root: Path) -> Path:
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    arch, tied, extra = TINY[name]
    out = make_tiny_checkpoint(TinyCheckpointConfig(arch=arch, seed=3, tie_word_embeddings=tied, vocab_size=1000,
                                                    init_std=0.05), Path(root) / name)
    if extra:
        cfg = json.loads((out / "config.json").read_text())
        cfg.update(extra)
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def hf_logits(ckpt: str, tokens_BS: torch.Tensor) -> torch.Tensor:
    """transformers' fp32 logits [B, S, V] with eager attention (the reference)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    with torch.no_grad():
        return m(input_ids=tokens_BS).logits.float()


def _gather_vocab(logits_local: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    from red_megatron.policy import parallel

    group = parallel.current().tp_group
    n = dist.get_world_size(group)
    if n == 1:
        return logits_local
    parts = [torch.empty_like(logits_local) for _ in range(n)]
    dist.all_gather(parts, logits_local.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def megatron_logits(model, tokens_BS: torch.Tensor, packed_seq_params=None):
    """Full-vocab logits [B, S, V_pad] on the last stage (None elsewhere); PP via send/recv."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from red_megatron.policy import parallel

    B, S = tokens_BS.shape
    pos = torch.arange(S).unsqueeze(0).expand(B, S)
    with torch.no_grad():
        groups = parallel.current()
        if groups.pp_size > 1:
            if not groups.is_first_stage:
                h = torch.empty(S, B, model.config.hidden_size)
                dist.recv(h, src=ps.get_pipeline_model_parallel_prev_rank())
                model.set_input_tensor(h)
            out = model(tokens_BS, pos, attention_mask=None, packed_seq_params=packed_seq_params)
            if not groups.is_last_stage:
                dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
                return None
        else:
            out = model(tokens_BS, pos, attention_mask=None, packed_seq_params=packed_seq_params)
    return _gather_vocab(out)


def logits_worker(ckpt: str, tp: int, pp: int, tokens_BS: torch.Tensor, cu_seqlens=None):
    from red_megatron.policy.convert import load_hf_weights
    from red_megatron.policy.model import build_model

    with megatron_parallel(tp=tp, pp=pp) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32)
        load_hf_weights(chunks, ckpt, groups=groups)
        chunks[0].eval()
        psp = None
        if cu_seqlens is not None:
            from megatron.core.packed_seq_params import PackedSeqParams

            mx = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                                  max_seqlen_q=mx, max_seqlen_kv=mx)
        logits = megatron_logits(chunks[0], tokens_BS, psp)
        padded_vocab = chunks[0].vocab_size if hasattr(chunks[0], "vocab_size") else None
    return {"logits": logits, "padded_vocab": padded_vocab}


def stream_worker(ckpt: str, tp: int, pp: int):
    from red_megatron.policy.convert import hf_weight_specs, load_hf_weights, stream_hf_weights
    from red_megatron.policy.model import build_model

    with megatron_parallel(tp=tp, pp=pp) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32)
        load_hf_weights(chunks, ckpt, groups=groups)
        specs = hf_weight_specs(chunks)
        streamed = [(n, t.detach().clone()) for n, t in stream_hf_weights(chunks, groups=groups)]
    return {"specs": specs, "streamed": streamed}


def roundtrip_worker(ckpt: str, out_dir: str, tp: int, pp: int):
    """Import at (tp, pp), export, import the export into a fresh model: return both params."""
    from red_megatron.policy.convert import export_hf, load_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model

    with megatron_parallel(tp=tp, pp=pp) as groups:
        a = build_model(ckpt, groups=groups, dtype=torch.float32)
        load_hf_weights(a, ckpt, groups=groups)
        export_hf(a, ckpt, out_dir, groups=groups)
        b = build_model(out_dir, groups=groups, dtype=torch.float32, options=ModelOptions(init_weights=False))
        load_hf_weights(b, out_dir, groups=groups)
        pa = {k: v.detach().clone() for k, v in a[0].named_parameters()}
        pb = {k: v.detach().clone() for k, v in b[0].named_parameters()}
    return {"a": pa, "b": pb}
