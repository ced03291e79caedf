"""The frozen reference of Rollout DPO (policy/reference.py) on the 2-process gloo pool, TP=2 and PP=2:
at the stage's start it gives the policy's own log-probs bit for bit, it stays put while the policy
trains, and one DPO update on real pairs raises the chosen responses over the rejected ones."""
from __future__ import annotations

import math
import time

import pytest
import torch

from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, hf_policy

pytestmark = pytest.mark.dist


def _job_reference(hf_dir: str, tp: int, pp: int):
    from red_megatron.algo import AlgoConfig, build_objective

    with megatron_parallel(tp=tp, pp=pp, seed=5):
        pol = hf_policy(hf_dir, tp=tp, pp=pp, lr=1e-2, clip_grad=0.0)
        ref = pol.frozen_reference()
        tokens, prompts = fixed_batch()
        batch = pol.step_batch(tokens, prompts)
        t0 = time.perf_counter()
        lp0, _ = pol.logprobs_and_entropy(batch)
        t1 = time.perf_counter()
        r0 = ref.logprobs(batch)
        t2 = time.perf_counter()
        lens = torch.tensor([len(t) - p for t, p in zip(tokens, prompts)])
        rewards, gid = torch.tensor([1., 0., 0., 1., 1.]), torch.tensor([0, 0, 1, 1, 2])
        off = torch.zeros(5, dtype=torch.bool)
        obj = build_objective(AlgoConfig(preset="rollout_dpo", num_online=2, dpo_beta=1.0))
        terms, _, _ = obj.token_terms(rewards, gid, off, lens, logp_N=lp0, ref_logp_N=r0,
                                      num_pairs=obj.num_pairs(rewards, gid, off))
        metrics = dict(obj.last_metrics)
        out = pol.train_step(batch, terms=terms, logp_old_N=lp0)
        lp1, _ = pol.logprobs_and_entropy(batch)
        r1 = ref.logprobs(batch)
        seq = lambda x: torch.stack([s.sum() for s in torch.split(x.double(), lens.tolist())])  # noqa: E731
        d = seq(lp1) - seq(lp0)
        param_bytes = lambda chunks: sum(p.numel() * p.element_size() for c in chunks for p in c.parameters())  # noqa
        return {"same_at_start": bool(torch.equal(lp0, r0)), "frozen": bool(torch.equal(r0, r1)),
                "moved": float((lp1 - lp0).abs().max()), "margin_gain": float((d[0] - d[1]) + (d[3] - d[2])),
                "unpaired_trained": float(d[4].abs()), "metrics": metrics, "skipped": out["skipped"],
                "ref_grads": any(p.requires_grad for c in ref.chunks for p in c.parameters()),
                "ref_bytes": param_bytes(ref.chunks), "policy_bytes": param_bytes(pol.chunks),
                "policy_pass_s": t1 - t0, "ref_pass_s": t2 - t1}


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_frozen_reference_and_one_dpo_update(dist2, tiny_ckpt_dir, tp, pp):
    r0, r1 = dist2.run(_job_reference, str(tiny_ckpt_dir), tp, pp)
    for r in (r0, r1):
        assert r["same_at_start"] and r["frozen"] and not r["ref_grads"]
        assert r["moved"] > 0 and r["skipped"] == 0.0
    m = r0["metrics"]
    assert (m["dpo/pairs"], m["dpo/prompts_dropped"]) == (2.0, 1.0)
    assert m["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6) and m["dpo/margin"] == pytest.approx(0.0, abs=1e-6)
    assert r0["margin_gain"] > 0, r0["margin_gain"]  # the chosen responses rose against the rejected ones
    assert r0["ref_bytes"] == r0["policy_bytes"]  # one more copy of the weights, nothing else
