"""Routing replay on the trainer side (policy/routing_replay.py), on the tiny Qwen3-MoE at EP=2 (2 gloo
processes): the reference "engine" is transformers' Qwen3MoeForCausalLM (fp32), whose routing is taken in the
one format [tokens, layers, topk].

- replaying the routing the model would choose itself changes nothing (≤ 1e-6);
- replaying a wrong routing (every expert shifted by one) changes the log-probs: this fails if replay were
  silently off, i.e. if the routers ignored the indices;
- a trainer whose routers are perturbed (noise on mlp.gate.weight) against the unperturbed engine: with the
  engine's routing replayed its log-probs are closer to the engine's than with its own routing;
- a sequence without routing (an offline trace) routes live while the others replay, in one pass;
- the update replays too: gradients still reach the routers (the gate probabilities of the replayed experts
  come from the router's logits), and expert-load metrics come back.
"""
from __future__ import annotations

import pytest
import torch

from tests.moe_helpers import hf_routing, make_tiny_moe, perturb_router, replay_worker

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    base = str(make_tiny_moe(root / "base"))
    return base, perturb_router(base, str(root / "perturbed"), scale=0.5)


def _batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, 1000, (int(L),), generator=g) for L in torch.randint(12, 20, (n,), generator=g)]
    return seqs, [4] * n


def _resp(logp_seq: list[torch.Tensor], prompt_lens: list[int]) -> torch.Tensor:
    """The engine's log-probs of the response tokens, in N order."""
    return torch.cat([lp[p - 1:] for lp, p in zip(logp_seq, prompt_lens)])


def test_replay_bites_and_closes_a_routing_mismatch(dist2, dirs):
    base, perturbed = dirs
    seqs, plens = _batch()
    engine_routing, engine_logp = hf_routing(base, seqs)
    own_routing, _ = hf_routing(perturbed, seqs)
    shifted = [torch.where(r >= 0, (r + 1) % 4, r) for r in engine_routing]
    mixed = [None] + engine_routing[1:]  # sequence 0 as an offline trace: no engine routing, routed live
    outs = dist2.run(replay_worker, perturbed, 2, seqs, plens,
                     {"engine": engine_routing, "own": own_routing, "shifted": shifted, "mixed": mixed})
    o = outs[0]
    ref = _resp(engine_logp, plens)
    flipped = sum(int((a != b).any(-1).sum()) for a, b in zip(engine_routing, own_routing))
    assert flipped > 0, "the perturbation should change some routing decisions"
    assert (o["own"] - o["live"]).abs().max() <= 1e-5, "replaying the model's own routing must change nothing"
    assert (o["shifted"] - o["live"]).abs().max() > 1e-2, "a wrong routing replayed must change the log-probs"
    gap_live = (o["live"] - ref).abs()
    gap_replay = (o["engine"] - ref).abs()
    assert gap_replay.max() < gap_live.max() and gap_replay.mean() < gap_live.mean(), (gap_replay, gap_live)
    n0 = len(seqs[0]) - plens[0]
    assert torch.equal(o["mixed"][:n0], o["live"][:n0]) and torch.equal(o["mixed"][n0:], o["engine"][n0:])
    # both ranks (EP peers, each with the same batch) agree
    assert torch.equal(outs[1]["engine"], o["engine"])
    # the update with replay: the routers learn and expert loads are reported
    assert all(m > 0 for m in o["router_moved"]), o["router_moved"]
    assert not torch.equal(o["after"], o["live"])
    assert o["moe_metrics"]["moe/load_max_over_mean"] >= 1.0 and "moe/tokens_per_expert/layer1" in o["moe_metrics"]


def test_aux_loss_is_off_by_default_and_logged_beside_the_red_loss(dist2, dirs):
    """moe_aux_loss_coeff=0 (the default) adds no gradient; > 0 adds megatron's switch aux-loss gradient while
    the RED loss (optim/loss) stays the same number, and its value is reported as moe/aux_loss."""
    from tests.moe_helpers import aux_loss_worker

    seqs, _ = _batch()
    (l0, g0, m0), (l1, g1, m1) = dist2.run(aux_loss_worker, dirs[0], [0.0, 0.5], seqs)[0]
    assert "moe/aux_loss" not in m0 and m0["moe/balance_loss"] > 0
    assert l1 == l0 and g1 != g0, (l0, l1, g0, g1)
    assert m1["moe/aux_loss"] == pytest.approx(0.5 * m1["moe/balance_loss"])
