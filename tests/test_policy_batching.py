"""Micro-batch planning: every response token lands exactly once, in N order, under the budget."""
from __future__ import annotations

import pytest
import torch

from red_megatron.algo import TokenTerms
from red_megatron.policy.batching import SequenceBatch, plan_micro_batches


def _batch(lengths, prompts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SequenceBatch(tokens=[torch.randint(3, 500, (n,), generator=g) for n in lengths], prompt_lens=list(prompts))


@pytest.mark.parametrize("pack", [True, False])
def test_plan_covers_every_response_token_once(pack):
    b = _batch([20, 33, 17, 40, 5, 9, 64], [5, 10, 3, 8, 1, 8, 60])
    mbs = plan_micro_batches(b, max_tokens=64, pack=pack)
    seen = torch.cat([mb.token_index_M for mb in mbs])
    assert sorted(seen.tolist()) == list(range(b.num_response_tokens))
    flat_targets = torch.cat([t[p:] for t, p in zip(b.tokens, b.prompt_lens)])
    for mb in mbs:
        assert mb.num_tokens <= 64
        # the logit row r predicts the token at flat position r + 1 of the same row
        flat = mb.tokens_BS.reshape(-1)
        assert torch.equal(flat[mb.logit_rows_M + 1], mb.target_M)
        assert torch.equal(flat_targets[mb.token_index_M], mb.target_M)
        if pack:
            assert mb.tokens_BS.shape[0] == 1 and mb.cu_seqlens is not None
            assert int(mb.cu_seqlens[-1]) == mb.tokens_BS.shape[1]
            # positions restart at 0 at every packed sequence
            starts = mb.cu_seqlens[:-1].long()
            assert torch.all(mb.position_ids_BS[0, starts] == 0)
        else:
            assert mb.cu_seqlens is None
    if pack:  # packing computes no padding at all
        assert sum(mb.num_tokens for mb in mbs) == sum(b.lengths)


def test_plan_is_deterministic_and_rejects_long_sequences():
    b = _batch([30, 30, 30, 12], [2, 2, 2, 2])
    a1 = plan_micro_batches(b, max_tokens=64)
    a2 = plan_micro_batches(b, max_tokens=64)
    assert [m.seq_ids for m in a1] == [m.seq_ids for m in a2]
    with pytest.raises(ValueError, match="sequence 0 has 30 tokens"):
        plan_micro_batches(b, max_tokens=20)


def test_batch_and_tensor_validation():
    with pytest.raises(ValueError, match=r"prompt_lens\[0\]"):
        SequenceBatch(tokens=[torch.arange(5)], prompt_lens=[0])
    b = _batch([10, 6], [4, 2])
    n = b.num_response_tokens
    terms = {"kind_N": torch.zeros(n, dtype=torch.int32), "adv_N": torch.ones(n), "rbar_N": torch.ones(n),
             "w_N": torch.ones(n), "weight_N": torch.ones(n)}
    t = TokenTerms.of(terms).with_logp(torch.zeros(n))
    assert t.ref_logp_N is None
    sel = t.select(torch.tensor([1, 3]), "cpu")
    assert sel.adv_N.shape == (2,)
    with pytest.raises(ValueError, match="logp_old_N"):
        TokenTerms.of(terms).with_logp(torch.zeros(n + 1))
    assert [x.numel() for x in b.split_per_sequence(torch.arange(n))] == [6, 4]
