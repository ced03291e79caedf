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
