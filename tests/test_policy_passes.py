"""The policy passes: kernel vs reference loss inside megatron's schedule, parity with HF transformers."""
from __future__ import annotations

import pytest
import torch

from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, red_terms, tiny_policy

pytestmark = pytest.mark.dist


def _job_impl(impl: str):
    with megatron_parallel(tp=2, pp=1, seed=13):
        pol = tiny_policy(tp=2, loss_impl=impl)
        tokens, prompts = fixed_batch(lengths=(14, 22, 9), prompts=(4, 6, 2))
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        lp, ent = pol.logprobs_and_entropy(tokens, prompts, 0.8)
        steps = [pol.train_step(tokens, prompts, red_terms(n, seed=s), lp + (0.5 - s), temperature=0.8)
                 for s in range(2)]
        return lp, ent, [(s["loss"], s["grad_norm"], s["clip_frac"]) for s in steps]


def test_triton_kernel_and_reference_agree_through_the_schedule(dist2):
    """The Triton kernel (interpreted on a CPU) on vocab-parallel TP=2 logits, fed by the passes."""
    ref = dist2.run(_job_impl, "reference")[0]
    ker = dist2.run(_job_impl, "kernel")[0]  # ~5 s under TRITON_INTERPRET
    assert torch.allclose(ref[0], ker[0], atol=1e-5) and torch.allclose(ref[1], ker[1], atol=1e-5)
    for a, b in zip(ref[2], ker[2]):
        assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6) and a[1] == pytest.approx(b[1], rel=1e-4)
        assert a[2] == pytest.approx(b[2], abs=1e-6)
    assert 0 < ref[2][0][2] < 1  # ratios of exp(-0.5) clip the ONLINE tokens with negative advantage
