"""Off-policy correction (red_megatron/algo/off_policy.py + TokenTerms.is_weight_N) against float64 references.

ρ_t = min(π_old/π_behaviour, C) on online tokens, 1 on offline tokens, 0 on the tokens of a sample whose
geometric-mean ratio leaves [1/bound, bound]; the corrected loss is decoupled PPO: −Σ weight·ρ·min(r·Â,
clip(r)·Â) with r = π_θ/π_old (the behaviour policy never enters the clipped ratio). Truncation and masking
are exercised (ratios far above C, samples far off).
"""
from __future__ import annotations

import math

import pytest
import torch

from red_megatron.algo import TokenKind, build_token_terms, red_token_loss
from red_megatron.algo.off_policy import off_policy_metrics, truncated_is_weights


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    # 2 groups x (3 online + 1 offline) samples of 1..6 tokens
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    offline = torch.tensor([False, False, False, True] * 2)
    lens = torch.randint(1, 7, (8,), generator=g)
    n = int(lens.sum())
    logp_old = -torch.rand(n, generator=g, dtype=torch.float64) * 3
    # behaviour: close to old for most tokens, far below for a few (ratio >> C), far above for one sample
    shift = torch.randn(n, generator=g, dtype=torch.float64) * 0.3
    shift[:3] = -1.0  # π_old/π_b = e > C = 2: truncated
    logp_b = logp_old + shift
    sample = torch.repeat_interleave(torch.arange(8), lens)
    logp_b[sample == 5] = logp_old[sample == 5] - 4.0  # sample 5: geometric-mean ratio e^4, masked at bound 10
    return group, offline, lens, logp_old, logp_b, sample


def _reference(logp_old, logp_b, sample, offline_B, cap, bound):
    """Plain float64 Python, token by token."""
    B = len(offline_B)
    online_tok = [not bool(offline_B[int(s)]) for s in sample]
    logq = [float(a - b) if on else 0.0 for a, b, on in zip(logp_old, logp_b, online_tok)]
    masked = [False] * B
    if bound is not None:
        for i in range(B):
            vals = [logq[t] for t in range(len(logq)) if int(sample[t]) == i and online_tok[t]]
            masked[i] = bool(vals) and abs(sum(vals) / len(vals)) > math.log(bound)
    rho, trunc, k3 = [], 0, 0.0
    for t, on in enumerate(online_tok):
        if not on:
            rho.append(1.0)
            continue
        q = math.exp(logq[t])
        trunc += q > cap
        k3 += (q - 1.0) - logq[t]
        rho.append(0.0 if masked[int(sample[t])] else min(q, cap))
    return rho, masked, trunc, k3


@pytest.mark.parametrize("cap,bound", [(2.0, None), (2.0, 10.0), (1.2, 3.0), (100.0, None)])
def test_truncated_is_weights_match_float64_reference(cap, bound):
    group, offline, lens, logp_old, logp_b, sample = _batch()
    offline_N = offline[sample]
    got = truncated_is_weights(logp_old, logp_b, offline_N, sample, 8, cap=cap, mask_bound=bound)
    rho, masked, trunc, k3 = _reference(logp_old, logp_b, sample, offline, cap, bound)
    assert torch.allclose(got.is_weight_N.double(), torch.tensor(rho, dtype=torch.float64), rtol=1e-7, atol=0)
    assert got.sample_masked_B.tolist() == masked
    n_online = sum(not bool(o) for o in offline_N)
    m = off_policy_metrics(got.sums, got.max_ratio, got.max_weight)
    assert m["offpolicy/truncated_fraction"] == pytest.approx(trunc / n_online, rel=1e-12)
    assert m["offpolicy/masked_samples"] == sum(masked)
    assert m["offpolicy/kl_k3_behaviour_old"] == pytest.approx(k3 / n_online, rel=1e-12)
    online_rho = [r for r, s in zip(rho, sample) if not bool(offline[int(s)])]
    assert m["offpolicy/is_weight_mean"] == pytest.approx(sum(online_rho) / n_online, rel=1e-7)
    assert m["offpolicy/is_weight_max"] == pytest.approx(max(online_rho), rel=1e-7) and max(online_rho) <= cap
    if cap == 2.0:
        assert trunc >= 3  # the truncation branch is exercised
    if bound == 10.0:
        assert masked[5] and not masked[0]


def test_corrected_loss_is_decoupled_ppo_times_rho():
    group, offline, lens, logp_old, logp_b, sample = _batch(1)
    adv_B = torch.tensor([1.0, -0.5, 0.3, 0.8, -1.0, 0.4, 0.2, 0.9])
    terms = build_token_terms(adv_B=adv_B, is_offline_B=offline, group_id_B=group, response_len_B=lens,
                              offline_kind=TokenKind.OFFLINE_SHIFT, rbar_G=torch.tensor([0.5, 0.25]), w=1.7)
    rho = truncated_is_weights(logp_old, logp_b, offline[sample], sample, 8, cap=2.0, mask_bound=10.0).is_weight_N
    corrected = terms.with_is_weight(rho)
    g = torch.Generator().manual_seed(3)
    logp = (logp_old + torch.randn(logp_old.shape, generator=g, dtype=torch.float64) * 0.4).clamp(max=-1e-3).float()
    args = lambda t: (t.kind_N, t.adv_N, t.rbar_N, t.w_N, t.weight_N)  # noqa: E731
    base = red_token_loss(logp, logp_old.float(), None, *args(terms))
    out = red_token_loss(logp, logp_old.float(), None, *args(corrected))
    # float64 reference: online tokens −weight·ρ·min(r·Â, clip(r)·Â); offline tokens as without correction
    ref_online, ref_offline = 0.0, 0.0
    for t in range(len(sample)):
        wt, a = float(terms.weight_N[t]), float(terms.adv_N[t])
        if terms.kind_N[t] == TokenKind.ONLINE:
            r = math.exp(float(logp[t]) - float(logp_old.float()[t]))
            ref_online -= wt * float(rho[t]) * min(r * a, min(max(r, 0.8), 1.2) * a)
    base_online = red_token_loss(logp, logp_old.float(), None, terms.kind_N, terms.adv_N, terms.rbar_N,
                                 terms.w_N, torch.where(terms.kind_N == TokenKind.ONLINE, terms.weight_N, 0.0))
    ref_offline = float(base.loss) - float(base_online.loss)
    assert float(out.loss) == pytest.approx(ref_online + ref_offline, rel=1e-5, abs=1e-7)
    assert corrected.is_weight_N is not None and torch.equal(corrected.is_weight_N[offline[sample]],
                                                             torch.ones(int(offline[sample].sum())))
    with pytest.raises(ValueError, match="already applied"):
        corrected.with_is_weight(rho)
    # the row layout and micro-batch selection carry ρ like every other field
    sel = corrected.select(torch.tensor([0, 2]))
    assert torch.equal(sel.is_weight_N, corrected.is_weight_N[[0, 2]])
    rows = sel.rows(torch.tensor([1, 3]), 5)
    assert rows.is_weight_N.tolist() == [0.0, float(sel.is_weight_N[0]), 0.0, float(sel.is_weight_N[1]), 0.0]
    assert "is_weight_N" not in corrected.kernel_kwargs()  # the kernel sees it folded into weight_N


def test_no_correction_when_behaviour_is_old():
    group, offline, lens, logp_old, _, sample = _batch(2)
    got = truncated_is_weights(logp_old, logp_old, offline[sample], sample, 8, cap=2.0, mask_bound=1.5)
    assert torch.equal(got.is_weight_N, torch.ones_like(got.is_weight_N))
    m = off_policy_metrics(got.sums, got.max_ratio, got.max_weight)
    assert m["offpolicy/kl_k3_behaviour_old"] == 0 and m["offpolicy/masked_samples"] == 0


@pytest.mark.parametrize("kw,match", [(dict(cap=0.0), r"tis_cap must be >= 1"), (dict(cap=0.5), r"tis_cap must be >= 1"), (dict(mask_bound=1.0), "mask_bound")])
def test_bad_options(kw, match):
    z = torch.zeros(3)
    with pytest.raises(ValueError, match=match):
        truncated_is_weights(z, z, torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), 1, **kw)


def test_stale_tokens_marks_exactly_the_tokens_older_than_the_bound():
    from red_megatron.algo.off_policy import stale_tokens

    got = stale_tokens([[3, 3, 4], None, [5], [2, 4]], [3, 2, 1, 2], oldest=4)
    assert got.tolist() == [True, True, False, False, False, False, True, False]
    assert stale_tokens([], [], oldest=0).numel() == 0
    with pytest.raises(ValueError, match="a sample has 2 tokens and 1 versions"):
        stale_tokens([[1]], [2], oldest=0)
