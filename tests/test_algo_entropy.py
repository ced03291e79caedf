"""Entropy statistics and the entropy regulator (RED part I, Eq. 9 and 11), hand-computed."""
import math

import pytest
import torch

from red_megatron.algo import (
    EntropyRegulator,
    batch_entropy_stats,
    entropy_partial_sums,
    entropy_stats_from_sums,
    entropy_weight,
    relative_change,
    sample_mean_entropy,
)


def test_sample_mean_entropy_and_batch_stats():
    # Samples of lengths 2, 1, 3 (the last offline): H_B = [(1+3)/2, 5, (1+1+4)/3] = [2, 5, 2].
    entropy_N = torch.tensor([1.0, 3.0, 5.0, 1.0, 1.0, 4.0])
    H_B = sample_mean_entropy(entropy_N, torch.tensor([2, 1, 3]))
    assert H_B.tolist() == [2.0, 5.0, 2.0]
    stats = batch_entropy_stats(H_B, torch.tensor([False, False, True]))
    # H^rl is a mean over samples (not tokens): (2 + 5)/2 = 3.5; H^sft = 2.
    assert stats.h_rl == pytest.approx(3.5) and stats.h_sft == pytest.approx(2.0)
    with pytest.raises(ValueError, match="response_len_B sums to"):
        sample_mean_entropy(entropy_N, torch.tensor([2, 1]))


def test_entropy_stats_from_reduced_sums_equal_global_batch():
    # Two "ranks" each reduce their own samples; summing the 4 numbers = the global batch.
    H_B = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])
    off = torch.tensor([False, True, False, False, True, False])
    s0 = entropy_partial_sums(H_B[:2], off[:2])
    s1 = entropy_partial_sums(H_B[2:], off[2:])
    merged = entropy_stats_from_sums(s0 + s1)
    direct = batch_entropy_stats(H_B, off)
    # online: (1 + 3 + 4 + 20)/4 = 7;  offline: (2 + 10)/2 = 6
    assert merged.h_rl == pytest.approx(7.0) and merged.h_sft == pytest.approx(6.0)
    assert (merged.h_rl, merged.h_sft) == pytest.approx((direct.h_rl, direct.h_sft))
    # A batch with no offline sample has an undefined H^sft (NaN), not 0.
    assert math.isnan(batch_entropy_stats(H_B[:1], off[:1]).h_sft)


def test_relative_change_and_floor():
    assert relative_change(1.8, 2.0) == pytest.approx(0.1)
    assert relative_change(2.4, 1.2) == pytest.approx(1.0)
    assert relative_change(5.0, 1e-9) == 0.0  # H_{t-1} <= 1e-8 gives ΔH = 0


def test_regulator_sequence_hand_computed():
    G = 4
    reg = EntropyRegulator(max_weight=G)
    # step 1: no previous entropies -> w = 1
    assert reg.update(2.0, 1.0) == 1.0
    # step 2: ΔH^rl = |1 - 1.8/2| = 0.1, ΔH^sft = |1 - 1.2/1| = 0.2 -> w = 0.2/0.1 = 2
    assert reg.update(1.8, 1.2) == pytest.approx(2.0)
    assert reg.last_delta_rl == pytest.approx(0.1) and reg.last_delta_sft == pytest.approx(0.2)
    # step 3: ΔH^rl = |1 - 1.62/1.8| = 0.1, ΔH^sft = |1 - 2.4/1.2| = 1 -> 10, clipped to G = 4
    assert reg.update(1.62, 2.4) == pytest.approx(4.0)
    # step 4: ΔH^rl = 0.1, ΔH^sft = |1 - 2.424/2.4| = 0.01 -> 0.1, clipped up to 1
    assert reg.update(1.458, 2.424) == pytest.approx(1.0)
    # step 5: ΔH^rl = 0 (RL exploration stalled) -> w = G
    assert reg.update(1.458, 2.0) == pytest.approx(float(G))
    assert reg.num_updates == 5


def test_regulator_stalled_by_tiny_previous_entropy_and_bad_input():
    # H^rl_{t-1} <= 1e-8 gives ΔH^rl = 0, hence w = G.
    assert entropy_weight(1.0, 1.0, 1e-9, 2.0, 7)[0] == 7.0
    # ΔH^rl just above the 1e-8 floor with ΔH^sft = 0 -> ratio 0 -> clipped to 1.
    assert entropy_weight(1.0, 2.0, 1.0 + 1e-6, 2.0, 7)[0] == 1.0
    reg = EntropyRegulator(max_weight=3)
    with pytest.raises(ValueError, match="h_sft"):
        reg.update(1.0, float("nan"))
    with pytest.raises(ValueError, match="max_weight"):
        EntropyRegulator(max_weight=0.5)


def test_regulator_state_dict_round_trip_gives_same_w():
    a = EntropyRegulator(max_weight=7)
    a.update(2.0, 1.0)
    a.update(1.9, 1.3)
    state = a.state_dict()
    b = EntropyRegulator(max_weight=7)
    b.load_state_dict(state)
    assert b.state_dict() == state
    # The resumed regulator computes the same next w as the original one.
    assert b.update(1.7, 1.5) == a.update(1.7, 1.5)
    # A fresh regulator would not (it would return the first-step w = 1).
    assert EntropyRegulator(max_weight=7).update(1.7, 1.5) == 1.0 != b.last_w
    with pytest.raises(ValueError, match="max_weight"):
        EntropyRegulator(max_weight=3).load_state_dict(state)
    with pytest.raises(ValueError, match="keys"):
        EntropyRegulator(max_weight=7).load_state_dict({"prev_h_rl": 1.0})
