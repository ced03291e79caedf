"""The nine presets of the paper's Table 2: each one's loss on the same tiny batch, by hand.

The batch: one prompt, G = 3 online samples of one token each and the offline trace of two.
  online rewards [1, 0, 0], trace reward 1; every online token has π = 0.5 and ratio
  r = π/π_old = [1.1, 0.9, 1.0] (inside the clip range); the trace's tokens have π = [0.5, 0.25].
With std (group of 4): mean 1/2, unbiased std √(1/3), Â = ±a with a = 0.5/(√(1/3) + 1e-6):
  Â = [a, −a, −a | a].  Online Σ r·Â = 1.1a − 0.9a − 1.0a = −0.8a.
Sequence-mean weights: online 1/(1·4), trace 1/(2·4).  So for an offline Σ_t r^offline_t = S:
  L = −[ (1/4)(−0.8a) + w·(1/8)·S·a ] = 0.2a − w·S·a/8.
"""
import math

import pytest
import torch

from red_megatron.algo import (
    PRESETS,
    AlgoConfig,
    EntropyStats,
    Preset,
    StagedPreset,
    build_objective,
    get_preset,
    preset_stages,
)

A = 0.5 / (math.sqrt(1 / 3) + 1e-6)
LOGP_ON = [math.log(0.5)] * 3
RATIO_ON = [1.1, 0.9, 1.0]
LOGP_OFF = [math.log(0.5), math.log(0.25)]


def _batch(with_online=True, with_offline=True):
    rewards, gid, off, lens, logp, old = [], [], [], [], [], []
    if with_online:
        rewards += [1.0, 0.0, 0.0]
        gid += [0, 0, 0]
        off += [False] * 3
        lens += [1, 1, 1]
        logp += LOGP_ON
        old += [lp - math.log(r) for lp, r in zip(LOGP_ON, RATIO_ON)]
    if with_offline:
        rewards += [1.0]
        gid += [0]
        off += [True]
        lens += [2]
        logp += LOGP_OFF
        old += [0.0, 0.0]  # unused for offline tokens
    t = torch.tensor
    return t(rewards), t(gid), t(off), t(lens), t(logp, dtype=torch.float64), t(old, dtype=torch.float64)


def _preset_loss(name, stage=None, prev=None, now=None):
    obj = build_objective(AlgoConfig(preset=name, num_online=3), stage)
    p = obj.preset
    rewards, gid, off, lens, logp, old = _batch(with_online=p.online, with_offline=p.with_offline)
    w = 1.0
    if obj.regulator is not None:
        obj.offline_weight(prev)
        w = obj.offline_weight(now)
    terms, _, _ = obj.token_terms(rewards, gid, off, lens, w=w)
    return obj.loss(logp, old, None, terms).loss.item(), w


# Entropies for the two regulated presets: ΔH^rl = |1 − 1.8/2| = 0.1, ΔH^sft = |1 − 1.2/1| = 0.2 -> w = 2.
PREV, NOW = EntropyStats(h_rl=2.0, h_sft=1.0), EntropyStats(h_rl=1.8, h_sft=1.2)

EXPECTED = {
    # r^offline = π: S = 0.5 + 0.25 = 0.75
    "mixpolicy": (0.2 * A - 0.75 * A / 8, 1.0),
    # r^offline = 1: S = 2
    "onpolicy_offline": (0.2 * A - 2 * A / 8, 1.0),
    # r̄ = 1/3 (one of three online samples correct): 0.5/(0.5 + 0.5/3) = 0.75, 0.25/(0.25 + 0.75/3) = 0.5
    "red_shift": (0.2 * A - 1.25 * A / 8, 1.0),
    # π_offline = 1 (S = 0.75) with w = 2
    "red_entropy": (0.2 * A - 2 * 0.75 * A / 8, 2.0),
    # accuracy shift (S = 1.25) with w = 2
    "red": (0.2 * A - 2 * 1.25 * A / 8, 2.0),
    # no std: Â = [0.5, −0.5, −0.5 | 0.5]; online Σ r·Â = −0.4; f(π) = 0.5/0.6, 0.25/0.35
    "luffy": (-(0.25 * -0.4 + (1 / 8) * (0.5 / 0.6 + 0.25 / 0.35) * 0.5), 1.0),
    # group of 3 (no trace): mean 1/3, std √(1/3): Σ r·Â = (1.1·2/3 − 0.9/3 − 1/3)/s = 0.1/s; weight 1/3
    "grpo": (-(1 / 3) * 0.1 / (math.sqrt(1 / 3) + 1e-6), 1.0),
    # NLL on the trace, token mean: (ln 2 + ln 4)/2
    "sft": ((math.log(2) + math.log(4)) / 2, 1.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_loss_on_the_tiny_batch(name):
    loss, w = _preset_loss(name, prev=PREV, now=NOW)
    exp_loss, exp_w = EXPECTED[name]
    assert w == pytest.approx(exp_w)
    assert loss == pytest.approx(exp_loss, rel=1e-6, abs=1e-9)


def test_presets_give_distinct_losses():
    losses = [round(EXPECTED[n][0], 6) for n in EXPECTED]
    assert len(set(losses)) == len(losses)


def test_sft_then_grpo_runs_sft_then_grpo():
    stages = preset_stages("sft_then_grpo")
    assert [s.name for s in stages] == ["sft", "grpo"]
    assert stages[0].lr == 5e-5 and stages[0].epochs == 3 and stages[0].aggregation == "token_mean"
    assert _preset_loss("sft_then_grpo", stages[0])[0] == pytest.approx(EXPECTED["sft"][0])
    assert _preset_loss("sft_then_grpo", stages[1])[0] == pytest.approx(EXPECTED["grpo"][0])
    with pytest.raises(ValueError, match="stage"):
        build_objective(AlgoConfig(preset="sft_then_grpo", num_online=3))


def test_table_rows():
    assert set(PRESETS) == {"sft", "grpo", "sft_then_grpo", "mixpolicy", "onpolicy_offline", "luffy",
                            "red_entropy", "red_shift", "red", "rollout_dpo", "guided_fading", "phi4_recipe"}
    assert isinstance(get_preset("sft_then_grpo"), StagedPreset)
    row = {n: (p.online, p.offline_term, p.pi_offline, p.weight_rule) for n, p in PRESETS.items() if isinstance(p, Preset)}
    assert row["red"] == (True, "shift", "accuracy", "entropy")
    assert row["red_shift"] == (True, "shift", "accuracy", "one")
    assert row["red_entropy"] == (True, "shift", "one", "entropy")
    assert row["mixpolicy"] == (True, "shift", "one", "one")
    assert row["onpolicy_offline"] == (True, "shift", "pi", "one")
    assert row["luffy"][:2] == (True, "luffy") and not get_preset("luffy").std_normalize
    assert row["grpo"][:2] == (True, "none") and row["sft"][:2] == (False, "nll")
    with pytest.raises(Exception):
        get_preset("red").online = False  # frozen


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="valid presets: .*red_shift"):
        get_preset("redd")
    with pytest.raises(ValueError, match="AlgoConfig.preset"):
        AlgoConfig(preset="redd")


def test_rbar_from_all_members_option():
    # r̄ over all G+1 = 2/4 = 0.5: 0.5/(0.5 + 0.25) = 2/3, 0.25/(0.25 + 0.375) = 0.4
    obj = build_objective(AlgoConfig(preset="red_shift", num_online=3, rbar_source="all"))
    rewards, gid, off, lens, logp, old = _batch()
    terms, rbar_G, _ = obj.token_terms(rewards, gid, off, lens)
    assert rbar_G.tolist() == [0.5]
    assert obj.loss(logp, old, None, terms).loss.item() == pytest.approx(0.2 * A - (2 / 3 + 0.4) * A / 8)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_online=0), "num_online"),
        (dict(preset="grpo", num_online=1), "num_online"),
        (dict(eps_lo=1.0), "eps_lo"),
        (dict(eps_hi=0.0), "eps_hi"),
        (dict(aggregation="constant"), "loss_constant"),
        (dict(aggregation="sum"), "aggregation"),
        (dict(luffy_gamma=0.0), "luffy_gamma"),
        (dict(kl_coef=-1.0), "kl_coef"),
        (dict(rbar_source="mean"), "rbar_source"),
        (dict(temperature=0.0), "temperature"),
    ],
)
def test_algo_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AlgoConfig(**kwargs)


def test_algo_config_group_size_rules():
    AlgoConfig(preset="red", num_online=1)  # 1 online + trace = 2 members: std is defined
    AlgoConfig(preset="grpo", num_online=1, std_normalize=False)  # no std, a group of one is fine
    obj = build_objective(AlgoConfig(preset="red", num_online=7))
    assert obj.group_size == 8 and obj.regulator is not None and obj.regulator.max_weight == 7


def test_objective_state_round_trip():
    a = build_objective(AlgoConfig(preset="red", num_online=3))
    a.offline_weight(PREV)
    b = build_objective(AlgoConfig(preset="red", num_online=3))
    b.load_state_dict(a.state_dict())
    assert b.offline_weight(NOW) == a.offline_weight(NOW) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="regulator"):
        build_objective(AlgoConfig(preset="red_shift", num_online=3)).load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", ["grpo", "red", "luffy", "mixpolicy", "onpolicy_offline"])
def test_one_gradient_step_moves_probability_towards_the_rewarded_samples(name):
    """Direction, not just value: a tabular policy (free logits per position over 8 tokens), one
    prompt, G = 3 online samples of equal length with rewards [1, 0, 0] (+ a correct trace where the
    preset has one). One small SGD step on the preset's loss must raise the log-prob of the correct
    sample and of the trace and lower each wrong one's. A flipped advantage or ratio sign fails."""
    torch.manual_seed(0)
    T, V = 4, 8
    theta = torch.randn(T, V, dtype=torch.float64, requires_grad=True)
    seqs = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0], [6, 5, 0, 7], [2, 2, 3, 1]])  # 3 online + trace
    obj = build_objective(AlgoConfig(preset=name, num_online=3))
    n = 4 if obj.preset.with_offline else 3
    rewards, gid = torch.tensor([1.0, 0.0, 0.0, 1.0][:n]), torch.zeros(n, dtype=torch.long)
    off, lens = torch.tensor([False, False, False, True][:n]), torch.full((n,), T)

    def seq_logp():
        lp = torch.log_softmax(theta, dim=-1)
        return torch.stack([lp[torch.arange(T), seqs[i]] for i in range(n)])  # [n, T]

    before = seq_logp().sum(1).detach()
    terms, _, _ = obj.token_terms(rewards, gid, off, lens, w=1.0)
    logp = seq_logp().reshape(-1)
    obj.loss(logp, logp.detach(), None, terms).loss.backward()
    with torch.no_grad():
        theta -= 0.05 * theta.grad
    delta = seq_logp().sum(1).detach() - before
    assert delta[0] > 0, f"{name}: the correct sample's log-prob fell ({delta.tolist()})"
    assert (delta[1:3] < 0).all(), f"{name}: a wrong sample's log-prob rose ({delta.tolist()})"
    if n == 4:
        assert delta[3] > 0, f"{name}: the trace's log-prob fell ({delta.tolist()})"
