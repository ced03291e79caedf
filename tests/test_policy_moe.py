"""Qwen3-MoE on megatron-core: logits equal transformers' Qwen3MoeForCausalLM (fp32) at EP=1, EP=2 and
TP=2 (with and without sequence parallelism) on the 2-process gloo pool; export round-trips the checkpoint
bit for bit from EP=2 and TP=2; a distributed checkpoint at EP=2 resumes bit-exactly.

The tiny checkpoint: 3 layers (layer 0 dense through mlp_only_layers), 4 experts, top-2, norm_topk_prob,
head_dim 32. EP=2 holds experts {0, 1} on rank 0 and {2, 3} on rank 1 (the allgather dispatcher).
"""
from __future__ import annotations

import pytest
import torch

from tests.moe_helpers import make_tiny_moe, moe_export_worker, moe_logits_worker
from tests.policy_model_helpers import hf_logits

pytestmark = pytest.mark.dist

TOL = 1e-5


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return str(make_tiny_moe(tmp_path_factory.mktemp("tiny_moe")))


def _tokens(vocab: int, seed: int = 0, shape=(2, 24)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g)


@pytest.mark.parametrize("tp,ep,sp", [(1, 1, False), (1, 2, False), (2, 1, False), (2, 1, True)],
                         ids=["ep1", "ep2", "tp2", "tp2_sp"])
def test_moe_logits_match_transformers(dist2, moe_dir, tp, ep, sp):
    tokens = _tokens(1000)
    ref = hf_logits(moe_dir, tokens)
    V = ref.shape[-1]
    outs = dist2.run(moe_logits_worker, moe_dir, tp, ep, tokens, sp)
    for rank, o in enumerate(outs):
        err = (o["logits"][..., :V] - ref).abs().max().item()
        assert err <= TOL, f"tp={tp} ep={ep} rank {rank}: max |megatron - transformers| = {err:.2e} > {TOL}"
    # each EP rank holds its own half of the experts (2 routed layers x 2 local experts x fc1/fc2)
    per_rank = 4 // ep
    assert all(len(o["expert_params"]) == 2 * per_rank * 2 for o in outs), [o["expert_params"] for o in outs]
    if ep == 2:
        assert sorted(o["ep_rank"] for o in outs) == [0, 1]


@pytest.mark.parametrize("tp,ep", [(1, 2), (2, 1)], ids=["ep2", "tp2"])
def test_moe_export_roundtrips_bit_exactly(dist2, moe_dir, tmp_path, tp, ep):
    from red_megatron.hf.safetensors import tensor_specs
    from safetensors import safe_open

    out = tmp_path / f"export_tp{tp}_ep{ep}"
    names = dist2.run(moe_export_worker, moe_dir, str(out), tp, ep)[0]
    src, dst = tensor_specs(moe_dir), tensor_specs(out)
    assert set(src) == set(dst) == set(names), sorted(set(src) ^ set(dst))[:5]
    assert any(".mlp.experts.3.down_proj" in n for n in names) and any(".mlp.gate.weight" in n for n in names)

    def load(d):
        from red_megatron.hf.safetensors import weight_map

        out = {}
        for name, fname in weight_map(d).items():
            with safe_open(str(d / fname) if hasattr(d, "joinpath") else f"{d}/{fname}", framework="pt") as f:
                out[name] = f.get_tensor(name)
        return out

    a, b = load(moe_dir), load(out)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{name} changed in the round trip"


def test_moe_checkpoint_resume_is_bit_exact_at_ep2(dist2, moe_dir, tmp_path):
    """Distributed checkpoint of an EP=2 policy (experts sharded, megatron's ChainedOptimizer: expert and
    dense parameters in optimizers of their own): the update after a resume equals the uninterrupted one."""
    from tests.moe_helpers import checkpoint_resume_worker

    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, 1000, (16,), generator=g) for _ in range(4)]
    for o in dist2.run(checkpoint_resume_worker, moe_dir, 2, str(tmp_path / "ckpt"), seqs):
        assert o["state"] == {"step": 1}
        assert o["resumed"] == o["straight"] and o["max_weight_diff"] == 0.0, o


def test_ep2_with_different_batches_on_the_dp_ranks(dist2, moe_dir):
    """EP peers are DP ranks with their own data: different sequence lengths and micro-batch counts are
    padded to equal shapes (megatron's allgather dispatcher gathers equal shapes; every forward is collective
    over the EP group). Each rank's log-probs equal transformers' for its own sequences."""
    from tests.moe_helpers import hf_routing, uneven_dp_worker

    g = torch.Generator().manual_seed(2)
    per_rank = [[torch.randint(3, 1000, (int(n),), generator=g) for n in lens] for lens in ([12, 30, 17], [9])]
    outs = dist2.run(uneven_dp_worker, moe_dir, 2, per_rank)
    # a 40-token budget plans 2 micro-batches on rank 0 and 1 on rank 1: rank 1 runs a padding-only second one
    assert outs[0]["micro_batches"] == outs[1]["micro_batches"] == 2
    for seqs, o in zip(per_rank, outs):
        _, ref = hf_routing(moe_dir, seqs)
        want = torch.cat([lp[3:] for lp in ref])
        assert (o["logp"] - want).abs().max() <= 1e-5 and o["loss"] == o["loss"]


def test_dense_qwen3_tp2_with_sequence_parallelism(dist2, tmp_path):
    """Qwen3's q/k norms under sequence parallelism (the policy's default at TP > 1): torch's fallback norm
    refused to build ("sequence parallel not supported by torch LayerNorm") before the project's norm took
    those slots too; the logits equal transformers'."""
    from tests.policy_model_helpers import make_tiny

    ckpt = str(make_tiny("qwen3", tmp_path))
    tokens = _tokens(1000)
    ref = hf_logits(ckpt, tokens)
    for o in dist2.run(moe_logits_worker, ckpt, 2, 1, tokens, True):
        assert (o["logits"][..., :ref.shape[-1]] - ref).abs().max().item() <= TOL
