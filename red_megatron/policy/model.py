"""Megatron GPTModel chunks from a Hugging Face config.json (Qwen2/2.5, Llama 3.x, Qwen3, Qwen3-MoE).

``build_model(hf_dir_or_config, groups=, dtype=)`` returns this rank's model chunk(s) after
``parallel.init_model_parallel``: a list with one GPTModel (no virtual pipeline stages), whose
layers, embedding and output layer are those of this rank's pipeline stage, TP-sharded.

Mapping HF -> Megatron (what makes the logits equal transformers'):
- RMSNorm everywhere (eps = rms_norm_eps), SwiGLU MLP (gate/up fused in ``linear_fc1``), no
  linear biases except Qwen2's q/k/v (``add_qkv_bias``), Qwen3's per-head q/k RMSNorm
  (``qk_layernorm``), tied or untied output layer.
- RoPE: megatron's rotary module with ``inv_freq`` replaced by transformers' own formula
  (``hf_config.rope_inv_freq``: default or llama3 scaling), so the frequencies are bit-equal.
- Vocabulary padded to a multiple of 128·TP (padding rows are zero; callers ignore the padded
  logit columns, see docs/KERNEL_CONTRACT.md).

Layer spec: transformer-engine's when it imports (fused, fastest); otherwise megatron's local
spec with its unfused core attention swapped for ``sdpa_attention.SDPAttention`` (flash/cuDNN on
the GPU, exact math on the CPU, packed THD sequences). ``ModelOptions.attention`` forces one.
Qwen3-MoE's routed layers are megatron-core MoE layers (policy/moe.py), sharded over ``groups.ep_size``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

import torch

from red_megatron.policy import compat
from red_megatron.hf.config import HFModelConfig, read_hf_config, rope_inv_freq
from red_megatron.policy.moe import MoEOptions, decoder_block_spec, moe_config_kwargs

_ATTENTION = ("auto", "te", "sdpa", "local")
_RECOMPUTE = (None, "full", "selective")


@dataclass(kw_only=True)
class ModelOptions:
    """Implementation choices that do not change the maths.

    attention: "auto" (TE if importable, else sdpa) | "te" | "sdpa" | "local" (megatron's
      unfused DotProductAttention: O(T²) memory, kept for comparison only).
    sdpa_backend: pin SDPA to "flash" | "cudnn" | "efficient" | "math"; None lets torch choose.
    recompute: activation recomputation: None | "full" (every layer) | "selective" (core attn).
    init_weights: random-initialise parameters (off when weights are loaded right after).
    fused_kernels: megatron's jit-fused bias-SwiGLU / bias-dropout-add (default: on with CUDA).
    sequence_parallel: megatron's SP (norms and dropout on sequence shards; needs TP > 1): the
      local spec's norms become the project's ``ProjectRMSNorm``.
    """

    attention: str = "auto"
    sdpa_backend: str | None = None
    recompute: str | None = None
    init_weights: bool = True
    fused_kernels: bool | None = None
    sequence_parallel: bool = False  # with TP > 1: activations outside attention/MLP split over the TP ranks

    def __post_init__(self) -> None:
        if self.attention not in _ATTENTION:
            raise ValueError(f"ModelOptions.attention must be one of {_ATTENTION}, got {self.attention!r}")
        if self.recompute not in _RECOMPUTE:
            raise ValueError(f"ModelOptions.recompute must be one of {_RECOMPUTE}, got {self.recompute!r}")
        if self.sdpa_backend not in (None, "auto", "flash", "cudnn", "efficient", "math"):
            raise ValueError(f"ModelOptions.sdpa_backend must be None, 'flash', 'cudnn', 'efficient' or 'math', "
                             f"got {self.sdpa_backend!r}")


def have_transformer_engine() -> bool:
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - TE's torch part fails to load without CUDA/cuDNN
        return False
    return True


def resolve_attention(options: ModelOptions) -> str:
    if options.attention == "auto":
        return "te" if torch.cuda.is_available() and have_transformer_engine() else "sdpa"
    if options.attention == "te" and not have_transformer_engine():
        raise ValueError("ModelOptions.attention='te' but transformer_engine does not import here")
    return options.attention


def layer_spec(hf: HFModelConfig, options: ModelOptions, *, layers_per_stage: int | None = None,
               first_layer: int = 0):
    """The transformer-layer ModuleSpec for ``hf`` (see the module docstring); with sequence
    parallelism on the local spec, or routed layers, the block's submodules (the final norm is the
    block's) for the ``layers_per_stage`` layers from ``first_layer``."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    impl = resolve_attention(options)
    if hf.is_moe and layers_per_stage is None:
        raise ValueError("layer_spec: a mixture-of-experts model needs layers_per_stage (one spec a layer)")
    if impl == "te":
        spec = specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=hf.qk_norm)
        if not hf.is_moe:
            return spec
        from megatron.core.extensions.transformer_engine import TENorm

        moe_spec = specs.get_gpt_layer_with_transformer_engine_spec(num_experts=hf.num_experts, moe_grouped_gemm=False,
                                                                    qk_layernorm=hf.qk_norm)
        from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

        return TransformerBlockSubmodules(
            layer_specs=[moe_spec if hf.moe_layers[i] else spec
                         for i in range(first_layer, first_layer + layers_per_stage)], layer_norm=TENorm)
    spec = specs.get_gpt_layer_local_spec(qk_layernorm=hf.qk_norm, normalization="RMSNorm")
    if impl == "sdpa":
        from red_megatron.policy.sdpa_attention import sdpa_attention_class

        spec.submodules.self_attention.submodules.core_attention = sdpa_attention_class(options.sdpa_backend)
    if options.sequence_parallel:
        from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

        from red_megatron.policy.norm import ProjectRMSNorm

        spec.submodules.input_layernorm = ProjectRMSNorm
        spec.submodules.pre_mlp_layernorm = ProjectRMSNorm
        if hf.qk_norm:  # Qwen3's per-head q/k norms: torch's fallback norm refuses SP configs too
            spec.submodules.self_attention.submodules.q_layernorm = ProjectRMSNorm
            spec.submodules.self_attention.submodules.k_layernorm = ProjectRMSNorm
        if layers_per_stage is None:
            raise ValueError("layer_spec: sequence parallelism needs layers_per_stage (the block spec is built)")
        if hf.is_moe:
            return decoder_block_spec(hf, spec, first_layer=first_layer, num_layers=layers_per_stage,
                                      layer_norm=ProjectRMSNorm, qk_layernorm=hf.qk_norm)
        return TransformerBlockSubmodules(layer_specs=[spec] * layers_per_stage, layer_norm=ProjectRMSNorm)
    if hf.is_moe:
        from megatron.core.transformer.transformer_block import LayerNormImpl

        return decoder_block_spec(hf, spec, first_layer=first_layer, num_layers=layers_per_stage,
                                  layer_norm=LayerNormImpl, qk_layernorm=hf.qk_norm)
    return spec


def transformer_config(hf: HFModelConfig, *, tp: int, pp: int, dtype: torch.dtype, options: ModelOptions,
                       cp: int = 1, ep: int = 1, moe: MoEOptions | None = None):
    """Megatron TransformerConfig equivalent to ``hf``, validated against TP/PP."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    checks = {"num_attention_heads": hf.num_heads, "num_key_value_heads": hf.num_kv_heads}
    if not hf.is_moe or not all(hf.moe_layers):  # a dense MLP somewhere
        checks["intermediate_size"] = hf.intermediate_size
    if hf.is_moe:
        checks["moe_intermediate_size"] = hf.moe_intermediate_size
    for name, v in checks.items():
        if v % tp:
            raise ValueError(f"config.json: {name}={v} is not divisible by tp={tp}")
    if hf.num_layers % pp:
        raise ValueError(f"config.json: num_hidden_layers={hf.num_layers} is not divisible by pp={pp}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    cuda = torch.cuda.is_available()
    fused = cuda if options.fused_kernels is None else options.fused_kernels
    kw = dict(
        num_layers=hf.num_layers, hidden_size=hf.hidden_size, num_attention_heads=hf.num_heads,
        num_query_groups=hf.num_kv_heads, kv_channels=hf.head_dim, ffn_hidden_size=hf.intermediate_size,
        normalization="RMSNorm", layernorm_epsilon=hf.rms_norm_eps, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, add_qkv_bias=hf.qkv_bias,
        qk_layernorm=hf.qk_norm, hidden_dropout=0.0, attention_dropout=0.0,
        init_method_std=float(hf.raw.get("initializer_range", 0.02)),
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
        sequence_parallel=options.sequence_parallel,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        use_cpu_initialization=not cuda, perform_initialization=options.init_weights,
        bias_activation_fusion=fused, bias_dropout_fusion=fused, masked_softmax_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        **moe_config_kwargs(hf, ep=ep, moe=moe),
    )
    if options.recompute == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif options.recompute == "selective":
        kw.update(recompute_granularity="selective")
    return TransformerConfig(**kw)


def fp32_lm_head(layer) -> None:
    """Run ``layer`` (the output ColumnParallelLinear) in fp32: its input and weight are upcast before the
    matmul, so the logits are an fp32 product of the bf16 values (vLLM's ``head_dtype=float32`` computes the
    same); the weight's gradient returns to its own (bf16) parameter through the cast."""
    forward = layer.forward

    def forward_fp32(input_, weight=None, runtime_gather_output=None):
        w = layer.weight if weight is None else weight
        return forward(input_.float(), weight=w.float(), runtime_gather_output=runtime_gather_output)

    layer.forward = forward_fp32


def hidden_lm_head(layer) -> None:
    """policy.fused_lm_head: ``layer`` (the output ColumnParallelLinear) skips its matmul and hands out
    its input as ColumnParallelLinear would feed the matmul: gathered over the sequence with sequence
    parallelism (reduce-scatter in the backward), else entered into the TP region (all-reduce of the
    gradient in the backward). The model then returns hidden states [B, S, D] where it returned logits;
    the loss applies the weight (``lm_head_weight``) chunk by chunk (kernels/lm_head_loss.py), whose
    gradient w.r.t. the hidden states is this rank's vocab shard's part, summed by that backward."""
    from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                        gather_from_sequence_parallel_region)

    group = getattr(layer, "tp_group", None)
    # the layer's own TP size (its config): megatron's global model-parallel state is read in policy/parallel.py only
    tp = group.size() if group is not None else int(layer.config.tensor_model_parallel_size)

    def forward_hidden(input_, weight=None, runtime_gather_output=None):
        del weight, runtime_gather_output
        if layer.sequence_parallel:
            return gather_from_sequence_parallel_region(input_, True, group=group), None
        if tp > 1:
            return copy_to_tensor_model_parallel_region(input_, group=group), None
        return input_, None

    layer.forward = forward_hidden


def lm_head_weight(chunk) -> torch.Tensor:
    """The LM-head weight shard [V_local, D] of a last-stage chunk (DDP-wrapped or not): the shared
    embedding with tied weights (the last stage's own copy under PP), else the output layer's."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    if chunk.share_embeddings_and_output_weights:
        return chunk.shared_embedding_or_output_weight()
    return chunk.output_layer.weight


def build_model(hf_config_or_dir, *, groups, dtype: torch.dtype | None = None,
                options: ModelOptions | None = None, lm_head_fp32: bool = False,
                moe: MoEOptions | None = None) -> list:
    """This rank's GPTModel chunk(s) for an HF config, in the layout of ``groups``
    (``parallel.init_model_parallel``'s result).

    dtype defaults to bfloat16 with CUDA and float32 on the CPU. Weights are random (or
    uninitialised with ``options.init_weights=False``); ``convert.load_hf_weights`` fills them.
    ``lm_head_fp32``: the last stage's LM head in fp32 (``fp32_lm_head``; nothing to do at fp32).
    ``moe``: how routed layers train (policy/moe.py; ignored for a dense checkpoint).
    """
    from megatron.core.models.gpt import GPTModel

    compat.enable()
    hf = read_hf_config(hf_config_or_dir)
    if hf.is_moe:
        compat.bind_missing_moe_names()
    options = options or ModelOptions()
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tp, pp = groups.tp_size, groups.pp_size
    if groups.cp_size > 1 and options.attention == "auto":  # the project's CP attention (docs/PARALLELISM.md)
        options = dataclasses.replace(options, attention="sdpa")
    if options.sequence_parallel and tp == 1:
        raise ValueError("sequence parallelism needs tensor parallelism: policy.sequence_parallel with policy.tp=1")
    cfg = transformer_config(hf, tp=tp, pp=pp, dtype=dtype, options=options, cp=groups.cp_size,
                             ep=groups.ep_size, moe=moe)
    per_stage = hf.num_layers // pp
    spec = layer_spec(hf, options, layers_per_stage=per_stage, first_layer=groups.pp_rank * per_stage)
    model = GPTModel(
        config=cfg, transformer_layer_spec=spec, vocab_size=hf.padded_vocab_size(tp),
        max_sequence_length=hf.max_position_embeddings, pre_process=groups.is_first_stage,
        post_process=groups.is_last_stage, parallel_output=True,
        share_embeddings_and_output_weights=hf.tie_word_embeddings, position_embedding_type="rope",
        rotary_percent=1.0, rotary_base=hf.rope_theta,
    )
    if lm_head_fp32 and groups.is_last_stage and dtype != torch.float32:
        fp32_lm_head(model.output_layer)
    device = groups.device
    model.to(device)
    # transformers' inv_freq (incl. llama3 scaling) so RoPE matches bit for bit
    model.rotary_pos_emb.inv_freq = rope_inv_freq(hf).to(device)
    model.hf_config = hf  # the converter and exporter read it back from the chunk
    if hf.is_moe:
        from red_megatron.policy.routing_replay import install_slots

        install_slots([model])
    return [model]


def model_config_of(chunks) -> HFModelConfig:
    """The HFModelConfig a chunk list was built from."""
    hf = getattr(chunks[0], "hf_config", None)
    if hf is None:
        raise ValueError("these model chunks were not built by model.build_model (no hf_config attribute)")
    return hf


__all__ = ["ModelOptions", "MoEOptions", "build_model", "fp32_lm_head", "hidden_lm_head", "lm_head_weight",
           "layer_spec", "transformer_config", "read_hf_config", "have_transformer_engine", "model_config_of"]
