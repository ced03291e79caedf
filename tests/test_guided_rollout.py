"""guided_fading through the rollout's prompt construction: guidance tokens are prompt, so they get
zero gradient (the policy's real batching and loss) and zero reward weight (the verifier reads the
continuation only), and the experience carries each sample's guidance length (its ``guided`` flag)."""
from __future__ import annotations

import torch

from kernels import red_loss_reference
from red_megatron.algo import AlgoConfig, build_objective
from red_megatron.algo.guidance import GuidanceSchedule, guidance_metrics
from red_megatron.data.dataset import Example
from red_megatron.experience import assemble_experience, merge_experience, score_experience
from red_megatron.policy.batching import SequenceBatch, plan_micro_batches
from red_megatron.rollout.engine import RolloutSample
from red_megatron.rollout.sampling import SamplingConfig

V = 40
BOXED = {20: "\\boxed{", 21: "7", 22: "}"}  # the guidance spells the right answer


def _decode(ids):
    return "".join(BOXED.get(i, f"<{i}>") for i in ids)


def _experience(p0: float):
    sched = GuidanceSchedule(p0=p0, fade=1.0, decay="linear", prefix_fraction=1.0, total_steps=4, seed=0,
                             max_response_tokens=8)
    sampling = SamplingConfig(n=2, temperature=1.0, top_p=1.0, max_tokens=8, seed=0, guidance=sched)
    examples = [Example(index=i, row=i, data_source="t", messages=[], prompt_ids=[5, 6, 7], gold="7",
                        trace_ids=[20, 21, 22, 2]) for i in range(2)]
    flat, glen = sampling.prompts(examples, batch=0)
    # the guidance takes its length of the response limit: prompt + guidance + continuation <= prompt + limit
    assert sampling.engine_args([ex.prompt_ids for ex in flat], batch=0, replica=0,
                                guidance_len=glen)["max_tokens"] == ([8 - k for k in glen] if any(glen) else 8)
    online = [[RolloutSample(token_ids=[30, 31, 2], logprobs=[-1.0] * 3, finish_reason="stop"),  # wrong
               RolloutSample(token_ids=[20, 21, 22, 2], logprobs=[-1.0] * 4, finish_reason="stop")]  # right
              for _ in examples]
    return assemble_experience(flat, online, with_offline=False, guidance_len=glen), sched


def test_guidance_is_prompt_never_scored():
    exp, sched = _experience(p0=1.0)
    assert exp.guidance_len == [3, 3, 3, 3] and exp.prompt_ids[0] == [5, 6, 7, 20, 21, 22]
    seen = []

    def score(texts, golds):
        seen.extend(texts)
        return [float("\\boxed{7}" in t) for t in texts], None

    exp = score_experience(exp, score=score, decode=_decode)
    assert exp.rewards_B.tolist() == [0.0, 1.0, 0.0, 1.0]  # the guided-but-wrong continuation scores 0
    assert seen[0] == "<30><31><2>"
    m = guidance_metrics(sched.probability(0), exp.guidance_len, exp.rewards_B, exp.is_offline_B)
    assert (m["guide/p"], m["guide/guided_fraction"], m["guide/prefix_tokens"]) == (1.0, 1.0, 3.0)
    # splits and merges (the replicas of one engine call) keep the flags
    parts = exp.split([1, 1], [0, 0])
    assert [p.guidance_len for p in parts] == [[3, 3], [3, 3]]
    assert merge_experience(parts).guidance_len == exp.guidance_len
    unguided, _ = _experience(p0=0.0)
    assert unguided.guidance_len == [0, 0, 0, 0] and unguided.prompt_ids[0] == [5, 6, 7]


def test_guidance_tokens_get_zero_gradient():
    exp, _ = _experience(p0=1.0)
    exp.rewards_B = torch.tensor([0.0, 1.0, 0.0, 1.0])
    tokens, prompt_lens = exp.sequences()
    assert prompt_lens == [6, 6, 6, 6]  # prompt 3 + guidance 3
    obj = build_objective(AlgoConfig(preset="guided_fading", num_online=2))
    terms, _, _ = obj.token_terms(exp.rewards_B, exp.group_id_B, exp.is_offline_B, exp.response_len_B)
    (mb,) = plan_micro_batches(SequenceBatch(tokens=tokens, prompt_lens=prompt_lens), max_tokens=64, pack=False)
    mb = mb.to("cpu")
    S = mb.tokens_BS.shape[1]
    logits = torch.randn(mb.tokens_BS.numel(), V, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = logits.requires_grad_()
    t = terms.select(mb.token_index_M).rows(mb.logit_rows_M, x.shape[0])
    per = {k: (v.double() if v.dtype.is_floating_point else v) for k, v in t.kernel_kwargs().items()}
    out = red_loss_reference(x, mb.target_R, vocab_start=0, vocab_size=V, temperature=1.0, **per)
    out.loss.backward()
    g = x.grad.abs().sum(-1).view(-1, S)  # [B, S]: row s predicts token s + 1
    assert (g[:, : 6 - 1] == 0).all(), "a row that predicts a prompt or guidance token got gradient"
    assert (g[:, 5:5 + 3] > 0).all(), "a row that predicts the first continuation tokens got no gradient"
