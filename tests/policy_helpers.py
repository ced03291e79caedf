"""Shared by the policy tests: a tiny policy, a fixed batch, and NLL/RED token terms.

Functions here run inside the dist2 pool workers (they are importable top-level callables).
"""
from __future__ import annotations

import torch

VOCAB = 1024


def tiny_chunks(tp: int, pp: int, *, dtype=torch.float32, layers: int = 2):
    """A tiny Qwen2-like GPTModel chunk on megatron's local spec (call inside megatron_parallel)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=layers, hidden_size=128, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=256, kv_channels=32, normalization="RMSNorm", gated_linear_unit=True,
                            activation_func=torch.nn.functional.silu, add_bias_linear=False, add_qkv_bias=True,
                            hidden_dropout=0.0, attention_dropout=0.0, params_dtype=dtype,
                            bf16=dtype == torch.bfloat16, pipeline_dtype=dtype, tensor_model_parallel_size=tp,
                            pipeline_model_parallel_size=pp, use_cpu_initialization=True, init_method_std=0.02)
    spec = get_gpt_layer_local_spec(qk_layernorm=False, normalization="RMSNorm")
    return [GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=VOCAB, max_sequence_length=512,
                     pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
                     parallel_output=True, share_embeddings_and_output_weights=False,
                     position_embedding_type="rope")]


def tiny_policy(tp: int = 1, pp: int = 1, loss=None, **overrides):
    from red_megatron.policy import parallel
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    kw = dict(tp=tp, pp=pp, dtype="float32", lr=1e-3, warmup_steps=1, lr_decay_steps=50, micro_batch_tokens=64,
              pack_sequences=False, loss_impl="reference", weight_decay=0.01)
    kw.update(overrides)
    cfg = PolicyConfig(**kw)
    return MegatronPolicy(tiny_chunks(tp, pp), cfg, groups=parallel.current(), vocab_size=VOCAB, loss=loss)


def fixed_batch(seed: int = 0, lengths=(20, 33, 17, 40, 12), prompts=(5, 10, 3, 8, 4)):
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(3, VOCAB - 24, (n,), generator=g) for n in lengths]  # ids < vocab
    return tokens, list(prompts)


def nll_terms(n: int, scale: float = 1.0) -> dict:
    """SFT-style NLL on every response token, token-mean normalised (weight 1/n · scale)."""
    return {"kind_N": torch.full((n,), 3, dtype=torch.int32), "adv_N": torch.zeros(n), "rbar_N": torch.ones(n),
            "w_N": torch.ones(n), "weight_N": torch.full((n,), scale / n)}


def red_terms(n: int, seed: int = 0) -> dict:
    """A mix of every token kind with random advantages (ONLINE, OFFLINE_SHIFT, OFFLINE_LUFFY, NLL)."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 4, (n,), generator=g).to(torch.int32)
    return {"kind_N": kind, "adv_N": torch.randn(n, generator=g), "rbar_N": torch.rand(n, generator=g),
            "w_N": 1.0 + torch.rand(n, generator=g), "weight_N": torch.full((n,), 1.0 / n)}


def params_snapshot(policy) -> dict:
    return {k: v.detach().clone() for c in policy.chunks for k, v in c.state_dict().items()
            if isinstance(v, torch.Tensor)}


def hf_policy(hf_dir: str, tp: int = 1, pp: int = 1, load_weights: bool = True, loss=None, **overrides):
    """A policy on policy-core's build_model (SDPA attention, packed THD support) for an HF dir.
    ``loss``: algo.LossParams given at construction (temperature, eps, ...); LossParams() if None."""
    from red_megatron.policy import model, parallel
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.hf.config import read_hf_config
    from red_megatron.policy.policy import MegatronPolicy

    kw = dict(tp=tp, pp=pp, dtype="float32", lr=1e-3, warmup_steps=1, lr_decay_steps=50, micro_batch_tokens=64,
              pack_sequences=True, loss_impl="reference")
    kw.update(overrides)
    cfg = PolicyConfig(**kw)
    if load_weights:
        return MegatronPolicy.from_hf(hf_dir, cfg, loss=loss)
    chunks = model.build_model(hf_dir, groups=parallel.current(), dtype=getattr(torch, cfg.dtype))
    return MegatronPolicy(chunks, cfg, groups=parallel.current(), vocab_size=read_hf_config(hf_dir).vocab_size,
                          hf_dir=hf_dir, loss=loss)
