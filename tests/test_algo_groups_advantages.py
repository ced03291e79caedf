"""Group assembly (RED_SPEC step 1) and group advantages (step 2), with hand-computed numbers."""
import math

import pytest
import torch

from red_megatron.algo import assemble_groups, check_groups, group_advantages, group_layout, per_token
from red_megatron.algo.groups import prepare_offline_trace, sample_index_of_tokens

EOS = 9


def test_assemble_groups_flags_and_trace_truncation():
    online = [[[1, 2, EOS], [3, EOS]], [[4, EOS], [5, 6, 7, EOS]]]
    offline = [[10, 11, 12, 13, 14], [20, EOS]]
    b = assemble_groups(online, offline, max_response_len=4, eos_token_id=EOS)
    assert b.group_id_B.tolist() == [0, 0, 0, 1, 1, 1]
    assert b.is_offline_B.tolist() == [False, False, True, False, False, True]
    # The long trace is cut to 3 tokens + EOS; a trace already ending in EOS keeps one EOS.
    assert b.responses[2] == [10, 11, 12, EOS]
    assert b.responses[5] == [20, EOS]
    assert b.response_len_B.tolist() == [3, 2, 4, 2, 4, 2]
    assert b.num_groups == 2


def test_assemble_groups_rejects_bad_input():
    with pytest.raises(ValueError, match="same number G"):
        assemble_groups([[[1]], [[1], [2]]], None, max_response_len=4, eos_token_id=EOS)
    with pytest.raises(ValueError, match="one per prompt"):
        assemble_groups([[[1]], [[2]]], [[3]], max_response_len=4, eos_token_id=EOS)
    with pytest.raises(ValueError, match="max_response_len"):
        prepare_offline_trace([1, 2], max_response_len=0, eos_token_id=EOS)


def test_permute_moves_flags_with_samples():
    b = assemble_groups([[[1, EOS], [2, EOS]]], [[3, 4, EOS]], max_response_len=8, eos_token_id=EOS)
    p = b.permute(torch.tensor([2, 0, 1]))
    assert p.is_offline_B.tolist() == [True, False, False]
    assert p.responses[0] == [3, 4, EOS]
    assert p.response_len_B.tolist() == [3, 2, 2]


def test_group_layout_and_check_groups():
    gid, off = group_layout(2, 3, with_offline=True)
    assert gid.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert off.tolist() == [False, False, False, True] * 2
    assert check_groups(gid, off) == 2
    with pytest.raises(ValueError, match="offline samples"):
        check_groups(torch.tensor([0, 0, 0]), torch.tensor([True, True, False]))
    with pytest.raises(ValueError, match="contiguous"):
        check_groups(torch.tensor([0, 2]), torch.tensor([False, False]))
    with pytest.raises(ValueError, match="torch.bool"):
        check_groups(torch.tensor([0, 0]), torch.tensor([0, 1]))


def test_per_token_broadcast():
    lens = torch.tensor([2, 1, 3])
    assert per_token(torch.tensor([5.0, 6.0, 7.0]), lens).tolist() == [5, 5, 6, 7, 7, 7]
    assert sample_index_of_tokens(lens).tolist() == [0, 0, 1, 2, 2, 2]


def test_advantages_with_std_hand_computed():
    # Group 0: rewards [1, 0, 0 | trace 1]: mean 1/2, deviations ±1/2,
    # unbiased var = 4·(1/4)/3 = 1/3, std = 0.5773503 -> Â = ±0.5/(0.5773503 + 1e-6) = ±0.8660239.
    # Group 1: all rewards equal -> Â = 0 (no signal, no division by zero).
    gid, _ = group_layout(2, 3, with_offline=True)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, gid)
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-6)
    assert a == pytest.approx(0.8660239, abs=1e-6)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-6)


def test_advantages_without_std_hand_computed():
    # Group of 3 (no trace): rewards [1, 0, 0], mean 1/3 -> Â = [2/3, -1/3, -1/3].
    gid, _ = group_layout(1, 3, with_offline=False)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0]), gid, std_normalize=False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3]))


def test_advantages_std_single_member_group_is_a_clear_error():
    with pytest.raises(ValueError, match="needs >= 2"):
        group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    # Without std a group of one is fine (Â = 0).
    assert group_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), std_normalize=False).tolist() == [0.0, 0.0]


def test_advantages_invariant_to_shuffling():
    g = torch.Generator().manual_seed(0)
    gid, _ = group_layout(5, 7, with_offline=True)
    r = torch.randint(0, 2, (gid.numel(),), generator=g).float()
    adv = group_advantages(r, gid)
    perm = torch.randperm(gid.numel(), generator=g)
    torch.testing.assert_close(group_advantages(r[perm], gid[perm]), adv[perm])
