"""Context parallelism (CP=2, load-balanced chunks, K/V all-gather) equals CP=1; sequence parallelism
with TP=2 equals TP=2 without. CPU, gloo, the dist2 pool, the tiny Qwen2 checkpoint."""
from __future__ import annotations

import pytest
import torch

from red_megatron.policy.context_parallel import chunk_ids, full_sequence, local_positions
from tests.cp_helpers import model_cp_worker

LENGTHS = [8, 12, 4, 20]  # uneven, each a multiple of 2·CP = 4


def assert_grad_close(got: torch.Tensor, ref: torch.Tensor, name: str, rel: float = 2e-6) -> None:
    """fp32 with another reduction order: the largest difference within ``rel`` of the tensor's scale."""
    err, scale = float((got - ref).abs().max()), float(ref.abs().max())
    assert err <= rel * scale + 1e-7, f"{name}: max |diff| {err:.3g} vs max |grad| {scale:.3g}"


def test_chunks_are_load_balanced_and_cover_the_sequence():
    for cp in (1, 2, 4):
        L = 8 * cp
        got = torch.cat([local_positions(L, r, cp) for r in range(cp)])
        assert sorted(got.tolist()) == list(range(L))
        # causal work of a chunk j is j+1 chunk-pairs: every rank does 2·cp+1
        assert {sum(j + 1 for j in chunk_ids(r, cp)) for r in range(cp)} == {2 * cp + 1}
    with pytest.raises(ValueError, match="2·CP=4|2·cp=4"):
        local_positions(6, 0, 2)


def test_full_sequence_inverts_the_split():
    cp, L = 2, 12
    seq = torch.arange(L)
    local = torch.stack([seq[local_positions(L, r, cp)] for r in range(cp)])  # [CP, L/CP]
    assert full_sequence(local, 0, L, cp).tolist() == seq.tolist()


@pytest.mark.dist
def test_cp2_equals_cp1_logits_and_every_gradient(dist2, tiny_ckpt_dir):
    ref = dist2.run(model_cp_worker, str(tiny_ckpt_dir), 1, LENGTHS)[0]
    got = dist2.run(model_cp_worker, str(tiny_ckpt_dir), 2, LENGTHS)
    for r in got:
        torch.testing.assert_close(r["logits"], ref["logits"], rtol=1e-5, atol=1e-5)
        assert r["grads"].keys() == ref["grads"].keys()
        for k in ref["grads"]:
            assert_grad_close(r["grads"][k], ref["grads"][k], k)


@pytest.mark.dist
def test_tp2_with_sequence_parallel_equals_tp2_without(dist2, tiny_ckpt_dir):
    lengths = [8, 12, 4, 20]  # 44 tokens: a multiple of TP
    ref = dist2.run(model_cp_worker, str(tiny_ckpt_dir), 1, lengths, 2, False)
    got = dist2.run(model_cp_worker, str(tiny_ckpt_dir), 1, lengths, 2, True)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-5, atol=1e-5)
        for k in a["grads"]:
            assert_grad_close(b["grads"][k], a["grads"][k], k)


def _micro_batch(lengths, prompts):
    from red_megatron.policy.batching import SequenceBatch, plan_micro_batches

    g = torch.Generator().manual_seed(3)
    batch = SequenceBatch(tokens=[torch.randint(3, 900, (n,), generator=g) for n in lengths], prompt_lens=prompts)
    (mb,) = plan_micro_batches(batch, max_tokens=sum(lengths), pack=True)
    return batch, mb


@pytest.mark.parametrize("cp,tp", [(2, 1), (2, 2), (1, 2), (4, 1)])
def test_localized_micro_batches_cover_every_response_token_once(cp, tp):
    from red_megatron.policy.context_parallel import localize_micro_batch

    batch, mb = _micro_batch([7, 13, 5, 10], [3, 4, 2, 6])  # uneven, not multiples of anything
    seen = []
    for r in range(cp):
        loc = localize_micro_batch(mb, cp_rank=r, cp_size=cp, tp_multiple=tp)
        T_local = loc.tokens_BS.shape[1]
        assert T_local % tp == 0
        cu = loc.cu_seqlens.tolist()
        assert cu[-1] == T_local * cp and all((b - a) % (2 * cp if cp > 1 else 1) == 0 for a, b in zip(cu, cu[1:]))
        # each local row's target is the token after the row's global position in its sequence
        for row, tgt, idx in zip(loc.logit_rows_M.tolist(), loc.target_M.tolist(), loc.token_index_M.tolist()):
            assert loc.tokens_BS[0, row].item() == mb.tokens_BS[0, mb.logit_rows_M[mb.token_index_M.tolist().index(idx)]].item()
            assert tgt == mb.target_M[mb.token_index_M.tolist().index(idx)].item()
        seen += loc.token_index_M.tolist()
    assert sorted(seen) == list(range(batch.num_response_tokens))


@pytest.mark.dist
def test_policy_passes_at_cp2_equal_cp1(dist2, tiny_ckpt_dir):
    """Per-token log-prob and entropy, the RED loss and the gradient norm of one update, through the
    policy's own micro-batch planner (packed, uneven lengths padded to 2·CP per sequence)."""
    from tests.cp_helpers import policy_cp_worker

    ref = dist2.run(policy_cp_worker, str(tiny_ckpt_dir), 1)[0]  # CP=1: the two ranks are DP replicas
    for r in dist2.run(policy_cp_worker, str(tiny_ckpt_dir), 2):
        torch.testing.assert_close(r["logp"], ref["logp"], rtol=0, atol=2e-5)
        torch.testing.assert_close(r["entropy"], ref["entropy"], rtol=0, atol=2e-5)
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)
        assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
