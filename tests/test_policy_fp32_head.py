"""policy.lm_head_fp32: the bf16 policy's LM head runs in fp32 (the logits vLLM's head_dtype=float32 computes)."""
from __future__ import annotations

import pytest
import torch

from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, hf_policy, red_terms

pytestmark = pytest.mark.dist


def _job(hf_dir: str, tp: int, fp32_head: bool):
    with megatron_parallel(tp=tp, pp=1, seed=5):
        pol = hf_policy(hf_dir, tp=tp, dtype="bfloat16", lm_head_fp32=fp32_head, sequence_parallel=False)
        head = pol.chunks[0].output_layer
        seen = {}

        def hook(mod, args, kwargs, out):
            seen.setdefault("in", args[0].detach().clone())
            seen.setdefault("out", out[0].detach().clone())

        h = head.register_forward_hook(hook, with_kwargs=True)
        tokens, prompts = fixed_batch()
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        lp, _ = pol.logprobs_and_entropy(tokens, prompts)
        h.remove()
        w = head.weight.detach()
        want = torch.nn.functional.linear(seen["in"].float(), w.float())
        out = pol.train_step(tokens, prompts, red_terms(n, seed=1), lp)
        grad = head.weight.main_grad
        return {"in_dtype": str(seen["in"].dtype), "out_dtype": str(seen["out"].dtype), "w_dtype": str(w.dtype),
                "exact": bool(torch.equal(seen["out"], want)) if fp32_head else None,
                "err_vs_fp32": float((seen["out"].float() - want).abs().max()),
                "grad_norm": out["grad_norm"], "head_grad": float(grad.abs().sum()), "lp": lp}


@pytest.mark.parametrize("tp", [1, 2])
def test_lm_head_in_fp32(dist2, tiny_ckpt_dir, tp):
    fp32 = dist2.run(_job, str(tiny_ckpt_dir), tp, True)
    bf16 = dist2.run(_job, str(tiny_ckpt_dir), tp, False)
    for r in fp32:
        assert r["w_dtype"] == "torch.bfloat16" and r["in_dtype"] == "torch.bfloat16"  # the model stays bf16
        assert r["out_dtype"] == "torch.float32" and r["exact"]  # fp32 product of the bf16 values, exactly
        assert r["head_grad"] > 0 and r["grad_norm"] > 0  # the head's weight still learns
    for r in bf16:
        assert r["out_dtype"] == "torch.bfloat16" and r["err_vs_fp32"] > 0  # the option is what changed it
    assert not torch.equal(fp32[0]["lp"], bf16[0]["lp"])
