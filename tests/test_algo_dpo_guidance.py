"""Rollout DPO and fading guidance, the algorithm side (algo/dpo.py, algo/guidance.py).

DPO: the pair builder on a hand-made batch; the loss's value against a float64 reference written from
the formula (per pair, plain Python floats), and the gradient of the contract's per-token reduction
(TokenKind.DPO through red_token_loss and through the kernel reference) against autograd of that
reference, on random cases. Guidance: the schedule's values, its draw, and the prefix rule.
"""
from __future__ import annotations

import math

import pytest
import torch

from kernels import red_loss_reference
from red_megatron.algo import AlgoConfig, TokenKind, build_objective, red_token_loss
from red_megatron.algo.dpo import build_pairs, dpo_loss, dpo_token_terms
from red_megatron.algo.guidance import GuidanceSchedule, guidance_prefix, guidance_probability, is_guided
from red_megatron.algo.presets import get_preset, preset_stages


def test_pair_builder_takes_the_first_correct_and_first_wrong_online_sample():
    #            group 0        group 1   group 2   group 3 (+ its trace)
    rewards = [0., 1., 1., 0.,  1., 1.,   0., 0.,   0., 1., 0., 1.]
    gid = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    off = [False] * 11 + [True]
    pairs = build_pairs(torch.tensor(rewards), torch.tensor(gid), torch.tensor(off))
    assert pairs.chosen_P.tolist() == [1, 9] and pairs.rejected_P.tolist() == [0, 8]
    assert (pairs.num_groups, pairs.dropped) == (4, 2)  # all-correct and all-wrong prompts are dropped
    # a correct trace never makes a pair: group 3 without its wrong online samples has none
    solo = build_pairs(torch.tensor([1., 1.]), torch.tensor([0, 0]), torch.tensor([False, True]))
    assert solo.chosen_P.numel() == 0 and solo.dropped == 1
    with pytest.raises(ValueError, match="0/1 rewards"):
        build_pairs(torch.tensor([0.5, 1.0]), torch.tensor([0, 0]))


def _random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    groups, k = 5, 4
    rewards = torch.randint(0, 2, (groups * k,), generator=g).float()
    rewards[:k] = torch.tensor([1., 0., 0., 1.])  # at least one pair
    gid = torch.arange(groups).repeat_interleave(k)
    lens = torch.randint(1, 9, (groups * k,), generator=g)
    n = int(lens.sum())
    logp = -torch.rand(n, generator=g, dtype=torch.float64) * 3
    ref = logp + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return rewards, gid, lens, logp, ref


def _reference_loss(rewards, gid, lens, logp, ref, beta, num_pairs):
    """The formula, pair by pair, in Python floats: mean over pairs of log(1 + exp(−m))."""
    bounds = [0] + torch.cumsum(lens, 0).tolist()
    seq = lambda x, i: sum(x[bounds[i]:bounds[i + 1]].tolist())  # noqa: E731
    total = 0.0
    for gr in sorted(set(gid.tolist())):
        members = [i for i in range(len(gid)) if gid[i] == gr]
        good = [i for i in members if rewards[i] == 1]
        bad = [i for i in members if rewards[i] == 0]
        if good and bad:
            c, r = good[0], bad[0]
            m = beta * ((seq(logp, c) - seq(ref, c)) - (seq(logp, r) - seq(ref, r)))
            total += math.log1p(math.exp(-m))
    return total / num_pairs


@pytest.mark.parametrize("seed", range(6))
def test_dpo_value_and_gradient_match_the_float64_reference(seed):
    rewards, gid, lens, logp, ref = _random_case(seed)
    beta = [0.1, 0.5, 2.0][seed % 3]
    pairs = build_pairs(rewards, gid)
    P = pairs.chosen_P.numel() + seed % 2  # some cases normalise by more pairs (other DP ranks' ones)
    want = _reference_loss(rewards, gid, lens, logp, ref, beta, P)
    x = logp.clone().requires_grad_()
    got = dpo_loss(x, ref, lens, pairs, beta=beta, num_pairs=P)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)
    (g_want,) = torch.autograd.grad(got, x)
    # autograd of the exact loss is itself checked against finite differences once
    if seed == 0:
        assert torch.autograd.gradcheck(lambda t: dpo_loss(t, ref, lens, pairs, beta=beta, num_pairs=P), (x,))
    terms, metrics = dpo_token_terms(logp_N=logp, ref_logp_N=ref, response_len_B=lens, pairs=pairs, beta=beta,
                                     num_pairs=P)
    assert set(terms.kind_N.tolist()) == {int(TokenKind.DPO)}
    assert metrics["dpo/pairs"] == pairs.chosen_P.numel() and metrics["dpo/prompts_dropped"] == pairs.dropped
    assert metrics["dpo/loss"] * pairs.chosen_P.numel() / P == pytest.approx(want, rel=1e-12)
    # the contract's per-token reduction: its gradient is the exact one (at the weights the pass measured)
    y = logp.clone().requires_grad_()
    out = red_token_loss(y, None, None, terms.kind_N, terms.adv_N.double(), terms.rbar_N, terms.w_N,
                         terms.weight_N.double())
    (g_got,) = torch.autograd.grad(out.loss, y)
    assert torch.allclose(g_got, g_want, rtol=1e-6, atol=1e-9), (g_got - g_want).abs().max()
    unpaired = ~torch.isin(terms.sample_idx_N, torch.cat([pairs.chosen_P, pairs.rejected_P]))
    assert (g_got[unpaired] == 0).all() and (g_want[unpaired] == 0).all()


def test_dpo_through_the_objective_and_the_kernel_reference():
    """The preset's objective builds the same terms, and the logits-side reference (what the trainer runs
    on the CPU) gives the logits the gradient of the exact loss through the log-softmax."""
    rewards, gid, lens, _, _ = _random_case(7)
    n, V = int(lens.sum()), 11
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(n, V, generator=g, dtype=torch.float64)
    target = torch.randint(0, V, (n,), generator=g)
    ref = torch.log_softmax(torch.randn(n, V, generator=g, dtype=torch.float64), -1).gather(1, target[:, None])[:, 0]
    logp = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
    obj = build_objective(AlgoConfig(preset="rollout_dpo", num_online=4, dpo_beta=0.3))
    assert obj.needs_reference
    pairs = build_pairs(rewards, gid)
    assert obj.num_pairs(rewards, gid, torch.zeros_like(gid, dtype=torch.bool)) == pairs.chosen_P.numel()
    terms, rbar, adv_B = obj.token_terms(rewards, gid, torch.zeros_like(gid, dtype=torch.bool), lens,
                                         logp_N=logp, ref_logp_N=ref)
    assert rbar is None and obj.last_metrics["dpo/pairs"] == pairs.chosen_P.numel()
    assert adv_B[pairs.chosen_P].gt(0).all() and adv_B[pairs.rejected_P].lt(0).all()
    x = logits.clone().requires_grad_()
    per = {k: (t.double() if t.dtype.is_floating_point else t) for k, t in terms.kernel_kwargs().items()}
    out = red_loss_reference(x, target, vocab_start=0, vocab_size=V, temperature=1.0, **per)
    (g_got,) = torch.autograd.grad(out.loss, x)
    y = logits.clone().requires_grad_()
    exact = dpo_loss(torch.log_softmax(y, -1).gather(1, target[:, None])[:, 0], ref, lens, pairs, beta=0.3)
    (g_want,) = torch.autograd.grad(exact, y)
    assert torch.allclose(g_got, g_want, rtol=1e-6, atol=1e-10)


def test_presets_and_options():
    assert [s.name for s in preset_stages("phi4_recipe")] == ["sft", "rollout_dpo", "grpo"]
    assert get_preset("rollout_dpo").online_term == "dpo" and not get_preset("rollout_dpo").with_offline
    assert get_preset("guided_fading").guidance and not get_preset("guided_fading").with_offline
    assert not build_objective(AlgoConfig(preset="guided_fading", num_online=3)).needs_reference
    for kwargs, field in ((dict(preset="rollout_dpo", num_online=1, std_normalize=False), "num_online"),
                          (dict(dpo_beta=0.0), "dpo_beta"), (dict(guidance_fade=0.0), "guidance_fade"),
                          (dict(guidance_p0=1.5), "guidance_p0"), (dict(guidance_decay="step"), "guidance_decay"),
                          (dict(guidance_prefix=0.0), "guidance_prefix")):
        with pytest.raises(ValueError, match=field):
            AlgoConfig(**kwargs)


def test_guidance_schedule():
    lin = [guidance_probability(s, 10, p0=1.0, fade=0.5, decay="linear") for s in range(10)]
    assert lin[:6] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, ]) and lin[5:] == [0.0] * 5
    cos = [guidance_probability(s, 8, p0=0.8, fade=1.0, decay="cosine") for s in (0, 2, 4, 6, 7)]
    assert cos == pytest.approx([0.8, 0.4 * (1 + math.cos(math.pi / 4)), 0.4, 0.4 * (1 - math.cos(math.pi / 4)),
                                 0.4 * (1 + math.cos(math.pi * 7 / 8))])
    # a draw is a function of (seed, step, index): the same on every rank, and Bernoulli(p) over prompts
    draws = [is_guided(3, 5, i, 0.3) for i in range(4000)]
    assert draws == [is_guided(3, 5, i, 0.3) for i in range(4000)]
    assert 0.27 < sum(draws) / 4000 < 0.33
    assert not any(is_guided(3, 5, i, 0.0) for i in range(100)) and all(is_guided(3, 5, i, 1.0) for i in range(100))


def test_guidance_prefix_is_part_of_the_prompt_and_fits_its_room():
    trace = list(range(100, 111)) + [2]  # 11 body tokens + EOS
    assert guidance_prefix(trace, 0.5, room=100) == list(range(100, 105))
    assert guidance_prefix(trace, 1.0, room=3) == [100, 101, 102]
    assert guidance_prefix([2], 1.0, room=5) == []  # never the EOS
    sched = GuidanceSchedule(p0=1.0, fade=0.5, decay="linear", prefix_fraction=0.5, total_steps=4, seed=0,
                             max_response_tokens=10)
    ids, k = sched.guide([1, 2, 3], trace, step=0, index=7)
    assert ids == [1, 2, 3, 100, 101, 102, 103, 104] and k == 5
    short = GuidanceSchedule(p0=1.0, fade=0.5, decay="linear", prefix_fraction=1.0, total_steps=4, seed=0,
                             max_response_tokens=4)  # the continuation keeps at least one token of the limit
    assert short.guide([1], trace, step=0, index=7) == ([1, 100, 101, 102], 3)
    assert sched.guide([1, 2, 3], trace, step=2, index=7) == ([1, 2, 3], 0)  # faded out at 0.5 of 4 steps
    with pytest.raises(ValueError, match=r"row 4 .*\(field 'target'\)"):
        sched.guide([1], None, step=0, index=0, where="row 4 (x)")
