"""red_megatron/rollout/compat.py: the vLLM behaviours the project steps around leave results unchanged."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.vllm


def test_token_ranks_are_counted_eagerly_and_identically():
    from vllm.v1.sample import sampler
    from vllm.v1.sample.ops import logprobs as ops

    from red_megatron.rollout.compat import eager_token_ranks

    compiled = ops.batched_count_greater_than  # the module's own (torch.compile'd) function stays as is
    assert hasattr(compiled, "_torchdynamo_orig_callable")
    assert eager_token_ranks() and eager_token_ranks()  # idempotent
    eager = sampler.batched_count_greater_than
    assert eager is not compiled and not hasattr(eager, "_torchdynamo_orig_callable")
    g = torch.Generator().manual_seed(0)
    for n in (1, 7):
        lp = torch.log_softmax(torch.randn(n, 300, generator=g), -1)
        tok = torch.randint(0, 300, (n, 1), generator=g)
        val = lp.gather(-1, tok)
        assert torch.equal(eager(lp, val), compiled(lp, val))
        assert torch.equal(eager(lp, val), (lp >= val).sum(-1))
