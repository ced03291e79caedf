"""Step metrics, the offline-reward option, and DP pre-normalisation of weight_N."""
import math

import pytest
import torch

from red_megatron.algo import (
    AlgoConfig,
    EntropyStats,
    build_objective,
    group_layout,
    rbar_histogram,
    red_token_loss,
    step_metrics,
)


def test_rbar_histogram_bins_k_over_G():
    # G = 4: r̄ ∈ {0, 1/4, ..., 1}; 5 bins hold one value each.
    assert rbar_histogram(torch.tensor([0.0, 0.25, 0.25, 1.0]), 5) == [1, 2, 0, 0, 1]
    with pytest.raises(ValueError):
        rbar_histogram(torch.tensor([0.5]), 0)


def test_step_metrics_hand_computed():
    obj = build_objective(AlgoConfig(preset="red", num_online=2))
    gid, off = group_layout(2, 2, with_offline=True)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    lens = torch.tensor([2, 4, 5, 3, 3, 1])
    terms, rbar_G, _ = obj.token_terms(rewards, gid, off, lens, w=1.0)
    N = int(lens.sum())
    logp = torch.full((N,), math.log(0.5), dtype=torch.float64)
    out = obj.loss(logp, logp, None, terms)
    m = step_metrics(rewards_B=rewards, is_offline_B=off, response_len_B=lens, rbar_G=rbar_G,
                     entropy=EntropyStats(h_rl=1.5, h_sft=0.7), regulator_metrics=obj.regulator.metrics(),
                     w=1.0, loss_out=out, rbar_bins=3)
    assert m["reward/online_accuracy"] == pytest.approx(3 / 4)
    assert m["reward/offline_accuracy"] == pytest.approx(1 / 2)
    assert m["response/online_mean_length"] == pytest.approx((2 + 4 + 3 + 3) / 4)
    assert m["red/rbar_hist"] == [0, 1, 1]  # r̄ = [1/2, 1]
    assert m["red/rbar_mean"] == pytest.approx(0.75)
    assert m["entropy/h_rl"] == 1.5 and m["entropy/h_sft"] == 0.7
    assert m["loss/policy"] == pytest.approx(out.policy_loss.item()) and m["loss/clip_frac"] == 0.0
    assert {"entropy/delta_rl", "entropy/delta_sft", "red/w"} <= set(m)


def test_offline_reward_assume_one():
    # Trace scored 0 but assumed correct: rewards [1, 0 | 1] instead of [1, 0 | 0].
    gid, off = group_layout(1, 2, with_offline=True)
    raw = torch.tensor([1.0, 0.0, 0.0])
    lens = torch.tensor([1, 1, 1])
    verify = build_objective(AlgoConfig(preset="red", num_online=2))
    assume = build_objective(AlgoConfig(preset="red", num_online=2, offline_reward="assume_one", rbar_source="all"))
    _, _, adv_v = verify.token_terms(raw, gid, off, lens)
    _, rbar_a, adv_a = assume.token_terms(raw, gid, off, lens)
    assert adv_v[2] < 0 < adv_a[2]
    torch.testing.assert_close(rbar_a, torch.tensor([2 / 3]))


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "constant"])
def test_dp_shards_with_global_counts_sum_to_the_full_batch_loss(aggregation):
    """Each DP rank holds whole groups; with the global counts passed in, the per-rank losses
    sum (as the gradient all-reduce does) to the single-process loss."""
    g = torch.Generator().manual_seed(0)
    G, P = 3, 4
    cfg = AlgoConfig(preset="red", num_online=G, aggregation=aggregation, loss_constant=6.0)
    gid, off = group_layout(P, G, with_offline=True)
    B = gid.numel()
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    lens = torch.randint(1, 6, (B,), generator=g)
    N = int(lens.sum())
    logp = torch.log(torch.rand(N, dtype=torch.float64, generator=g) * 0.9 + 0.05)
    old = logp + 0.2 * torch.randn(N, dtype=torch.float64, generator=g)
    obj = build_objective(cfg)
    full_terms, _, _ = obj.token_terms(rewards, gid, off, lens, w=2.0)
    full = obj.loss(logp, old, None, full_terms).loss.item()

    tok_start = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    total = 0.0
    for rank_groups in ([0, 1], [2, 3]):
        s = torch.isin(gid, torch.tensor(rank_groups))
        idx_B = torch.nonzero(s).flatten()
        tok = torch.cat([torch.arange(int(tok_start[i]), int(tok_start[i + 1])) for i in idx_B])
        local_gid = gid[s] - rank_groups[0]
        terms, _, _ = obj.token_terms(rewards[s], local_gid, off[s], lens[s], w=2.0, num_prompts=P, total_tokens=N)
        total += red_token_loss(logp[tok], old[tok], None, terms.kind_N, terms.adv_N, terms.rbar_N, terms.w_N,
                                terms.weight_N, **obj.loss_kwargs()).loss.item()
    assert total == pytest.approx(full, rel=1e-6)
