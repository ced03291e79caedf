"""One step's experience: prompts -> G online samples + the offline trace -> rewards.

RED_SPEC.md step 1: each prompt's group is its G online samples from the rollout engine plus
its offline trace (already truncated to the response limit, EOS last, by the dataset). Every
sample carries an explicit ``is_offline`` flag and its group id; nothing downstream infers
either from a position. Step 2's rewards come from the math verifier, the trace scored like
any other sample (the algorithm may override its reward with 1: AlgoConfig.offline_reward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from red_megatron.data.dataset import Example


@dataclass
class Experience:
    """B = samples of the step in group order (G online then, if used, the trace, per prompt)."""

    prompt_ids: list[list[int]]  # [B] the sample's prompt ids
    response_ids: list[list[int]]  # [B] response ids (EOS included when the sample stopped)
    group_id_B: torch.Tensor  # int64: index of the prompt within the step
    is_offline_B: torch.Tensor  # bool: the prompt's offline trace
    rewards_B: torch.Tensor  # float32: verified accuracy, 0/1
    engine_logp: list[list[float] | None]  # [B] the engine's sampled log-probs (None for traces)
    finish_reasons: list[str]  # [B] "stop" | "length" | "offline"
    reward_reasons: list[str] = field(default_factory=list)
    num_prompts: int = 0
    traces_truncated: int = 0
    # [B] the policy version (optimiser steps) that generated each sample, -1 for traces; empty when
    # not tracked (docs/ASYNC.md: with rollout.max_staleness k, a trained sample is at most k behind)
    policy_version: list[int] = field(default_factory=list)
    # [B] each online sample's experts ([tokens, layers, topk], rollout/routing.py), None for traces; empty
    # when the engine returns no routing (dense models, rollout.return_routing off)
    routed_experts: list = field(default_factory=list)

    @property
    def response_len_B(self) -> torch.Tensor:
        return torch.tensor([len(r) for r in self.response_ids], dtype=torch.int64)

    def split(self, num_prompts: list[int], traces_truncated: list[int]) -> list["Experience"]:
        """Consecutive parts of ``num_prompts[k]`` prompts each (group ids renumbered from 0), with
        ``traces_truncated[k]`` truncated traces: the experience of several replicas generated in one
        engine call, handed back per replica."""
        if sum(num_prompts) != self.num_prompts:
            raise ValueError(f"Experience.split: {sum(num_prompts)} prompts asked for, {self.num_prompts} held")
        parts, lo = [], 0
        for n, truncated in zip(num_prompts, traces_truncated, strict=True):
            idx = [i for i, g in enumerate(self.group_id_B.tolist()) if lo <= g < lo + n]
            pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
            sel = torch.tensor(idx, dtype=torch.long)
            parts.append(Experience(
                prompt_ids=pick(self.prompt_ids), response_ids=pick(self.response_ids),
                group_id_B=self.group_id_B[sel] - lo, is_offline_B=self.is_offline_B[sel],
                rewards_B=self.rewards_B[sel], engine_logp=pick(self.engine_logp),
                finish_reasons=pick(self.finish_reasons),
                reward_reasons=pick(self.reward_reasons) if self.reward_reasons else [], num_prompts=n,
                traces_truncated=truncated, policy_version=pick(self.policy_version) if self.policy_version else [],
                routed_experts=pick(self.routed_experts) if self.routed_experts else []))
            lo += n
        return parts

    def sequences(self) -> tuple[list[torch.Tensor], list[int]]:
        """(prompt + response token ids, prompt length) of every sample, for the policy's passes."""
        toks = [torch.tensor(p + r, dtype=torch.int64) for p, r in zip(self.prompt_ids, self.response_ids)]
        return toks, [len(p) for p in self.prompt_ids]


def merge_experience(parts: Sequence[Experience]) -> Experience:
    """One experience from consecutive parts (the inverse of :meth:`Experience.split`)."""
    cat = lambda name: [x for p in parts for x in getattr(p, name)]  # noqa: E731
    offsets = torch.cumsum(torch.tensor([0] + [p.num_prompts for p in parts[:-1]]), 0).tolist()
    return Experience(
        prompt_ids=cat("prompt_ids"), response_ids=cat("response_ids"),
        group_id_B=torch.cat([p.group_id_B + o for p, o in zip(parts, offsets)]),
        is_offline_B=torch.cat([p.is_offline_B for p in parts]), rewards_B=torch.cat([p.rewards_B for p in parts]),
        engine_logp=cat("engine_logp"), finish_reasons=cat("finish_reasons"), reward_reasons=cat("reward_reasons"),
        num_prompts=sum(p.num_prompts for p in parts), traces_truncated=sum(p.traces_truncated for p in parts),
        policy_version=cat("policy_version") if all(getattr(p, "policy_version", None) for p in parts) else [],
        routed_experts=cat("routed_experts") if all(getattr(p, "routed_experts", None) for p in parts) else [])


GenerateFn = Callable[..., list]  # RolloutEngine.generate's signature
ScoreFn = Callable[[list[str], list[str]], tuple[list[float], object]]  # RewardScorer.score


def collect_experience(
    examples: Sequence[Example],
    *,
    generate: GenerateFn | None,
    score: ScoreFn,
    decode: Callable[[list[int]], str],
    num_online: int,
    with_offline: bool,
    temperature: float,
    top_p: float,
    max_response_tokens: int,
    seed: int,
) -> Experience:
    """Roll out, attach the traces, verify. ``generate=None`` means no online samples (the sft preset)."""
    if not examples:
        raise ValueError("collect_experience: no prompts in this step's batch")
    online = []
    if num_online > 0:
        if generate is None:
            raise ValueError("collect_experience: num_online > 0 needs a rollout engine")
        online = generate([ex.prompt_ids for ex in examples], n=num_online, temperature=temperature, top_p=top_p,
                          max_tokens=max_response_tokens, seed=seed)
    prompt_ids, response_ids, group, offline, engine_logp, finish, golds, routed = [], [], [], [], [], [], [], []
    truncated = 0
    for g, ex in enumerate(examples):
        for s in (online[g] if online else []):
            # vLLM returns at least one token (EOS included when it stops), so no response is empty
            assert s.token_ids and len(s.token_ids) == len(s.logprobs), "rollout returned an empty sample"
            s_ids, s_lp = list(s.token_ids), list(s.logprobs)
            prompt_ids.append(ex.prompt_ids)
            response_ids.append(s_ids)
            group.append(g)
            offline.append(False)
            engine_logp.append(s_lp)
            routed.append(getattr(s, "routed_experts", None))
            finish.append(s.finish_reason)
            golds.append(ex.gold)
        if with_offline:
            if ex.trace_ids is None:
                raise ValueError(f"row {ex.row} ({ex.data_source}): the preset uses the offline trace but this "
                                 f"row has none (field 'target')")
            prompt_ids.append(ex.prompt_ids)
            response_ids.append(list(ex.trace_ids))
            group.append(g)
            offline.append(True)
            engine_logp.append(None)
            routed.append(None)
            finish.append("offline")
            golds.append(ex.gold)
            truncated += int(ex.trace_truncated)
    rewards, stats = score([decode(r) for r in response_ids], golds)
    return Experience(
        prompt_ids=prompt_ids, response_ids=response_ids,
        group_id_B=torch.tensor(group, dtype=torch.int64), is_offline_B=torch.tensor(offline, dtype=torch.bool),
        rewards_B=torch.tensor(rewards, dtype=torch.float32), engine_logp=engine_logp, finish_reasons=finish,
        reward_reasons=list(getattr(stats, "reasons", [])), num_prompts=len(examples), traces_truncated=truncated,
        routed_experts=routed if any(r is not None for r in routed) else [],
    )

