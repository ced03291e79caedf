"""The LM-head-fused RED loss under tensor parallelism: 2 gloo ranks, each holding half the head's rows.

Every rank builds the same hidden states, weight and terms (same seed), keeps its vocab half of the
weight and calls the op with the world group. The parent compares the per-token results and loss
with the single-process float64 reference on the full weight, the SUM of the two ranks' dL/dhidden
(each is its shard's part; Megatron's TP region op sums them) with the reference's dL/dhidden, and
the concatenated dL/dweight shards with the reference's. Also: exactly one collective per call and
none in the backward, a tie in the max across the two shards, a rank whose shard is all padding.
"""
from __future__ import annotations

import pytest
import torch

from tests.test_kernel_lm_head_loss import TOL, make_head, rel, run_ref
from tests.test_kernel_red_loss_tp import counting_all_gathers

pytestmark = [pytest.mark.dist,
              pytest.mark.skipif(torch.cuda.is_available(), reason="CPU/gloo test (Triton interpreter)")]

V = 1000  # global (padded) rows of the head; 500 per rank


def _tp_worker(backend, dtype, vocab_size, opts, seed, ties):
    import importlib

    import torch.distributed as dist

    from kernels.lm_head_loss import lm_head_logprob_entropy, lm_head_red_loss

    rl = importlib.import_module("kernels.red_loss")
    rank, world = dist.get_rank(), dist.get_world_size()
    temp = opts.get("temperature", 0.7)
    h, w, target, per = make_head(v=V, vocab_size=vocab_size, dtype=dtype, seed=seed, temperature=temp, ties=ties)
    vl = V // world
    shard = w[rank * vl:(rank + 1) * vl].contiguous()
    kw = dict(vocab_start=rank * vl, vocab_size=vocab_size, temperature=temp, group=dist.group.WORLD,
              backend=backend, chunk_tokens=10, **{k: v for k, v in opts.items() if k != "temperature"})
    with counting_all_gathers(rl) as calls:
        hx, wx = h.clone().requires_grad_(), shard.clone().requires_grad_()
        out = lm_head_red_loss(hx, wx, target, **per, **kw)
        n_fwd = len(calls)
        gh, gw = torch.autograd.grad(out.loss, [hx, wx])
        n_bwd = len(calls) - n_fwd
        lp, ent = lm_head_logprob_entropy(h, shard, target, **{k: kw[k] for k in (
            "vocab_start", "vocab_size", "temperature", "group", "backend", "chunk_tokens")})
        n_lp = len(calls) - n_fwd - n_bwd
    return dict(loss=float(out.loss.detach()), logp=out.logp_N, ent=out.entropy_N.detach(),
                clip=float(out.clip_frac), gh=gh, gw=gw, lp=lp, lp_ent=ent, calls=(n_fwd, n_bwd, n_lp))


CASES = {  # backend, dtype, vocab_size, options, seed, ties
    "torch_fp32_entropy_kl_T1.3": ("torch", torch.float32, 990, dict(entropy_coef=0.05, kl_coef=0.1, temperature=1.3),
                                   31, False),
    "triton_fp32_entropy_kl_T1.3": ("triton", torch.float32, 990, dict(entropy_coef=0.05, kl_coef=0.1,
                                                                       temperature=1.3), 31, False),
    "torch_bf16_blocks": ("torch", torch.bfloat16, 1000, dict(vocab_block=300), 32, False),
    "triton_bf16_ties_across_shards_blocks": ("triton", torch.bfloat16, 990, dict(temperature=0.9, vocab_block=300),
                                              33, True),
    "torch_rank1_all_padding": ("torch", torch.float32, 450, dict(entropy_coef=0.05), 34, False),
    "triton_rank1_all_padding": ("triton", torch.float32, 450, dict(), 34, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tp2_matches_full_head_reference(dist2, case):
    backend, dtype, vocab_size, opts, seed, ties = CASES[case]
    r0, r1 = dist2.run(_tp_worker, backend, dtype, vocab_size, opts, seed, ties)
    temp = opts.get("temperature", 0.7)
    h, w, target, per = make_head(v=V, vocab_size=vocab_size, dtype=dtype, seed=seed, temperature=temp, ties=ties)
    kw = dict(vocab_start=0, vocab_size=vocab_size, temperature=temp, **{k: v for k, v in opts.items()
                                                                         if k not in ("temperature", "vocab_block")})
    if not opts.get("kl_coef"):
        per = {**per, "ref_logp_N": None}
    ref, rgh, rgw = run_ref(h, w, target, per, **kw)
    tol = TOL[dtype]
    for r in (r0, r1):
        assert r["calls"] == (1, 0, 1), f"one all-gather per call, none in the backward; saw {r['calls']}"
        torch.testing.assert_close(r["logp"].double(), ref.logp_N, rtol=0, atol=tol["tok"] * 10)
        torch.testing.assert_close(r["ent"].double(), ref.entropy_N.detach(), rtol=0, atol=tol["tok"] * 10)
        assert torch.equal(r["lp"], r["logp"]) and torch.equal(r["lp_ent"], r["ent"])
        assert abs(r["loss"] - float(ref.loss)) < tol["loss"] * max(1e-2, abs(float(ref.loss)))
        assert abs(r["clip"] - float(ref.clip_frac)) < 1e-6
    assert torch.equal(r0["logp"], r1["logp"]) and r0["loss"] == r1["loss"]  # identical merged statistics
    gh = (r0["gh"].double() + r1["gh"].double())  # the TP region op's all-reduce
    assert rel(gh, rgh) < tol["grad"] * 2, f"dL/dhidden rel error {rel(gh, rgh):.3g}"
    gw = torch.cat([r0["gw"], r1["gw"]], 0)
    assert rel(gw, rgw) < tol["grad"], f"dL/dweight rel error {rel(gw, rgw):.3g}"
    if vocab_size <= V // 2:
        assert torch.equal(r1["gw"], torch.zeros_like(r1["gw"])) and torch.equal(r1["gh"], torch.zeros_like(r1["gh"]))
    if ties:  # the tied maximum sits in both shards (rows 300 and 600 of 1000)
        x = h.float() @ w.float().t()
        assert torch.equal(x[:, 300], x[:, 600]) and torch.equal(x.max(1).values, x[:, 600])
