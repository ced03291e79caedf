"""One step's experience: prompts -> G online samples + the offline trace -> rewards.

Two functions make it, whichever rollout produced the samples: :func:`assemble_experience`
(group order, flags, behaviour log-probs) and :func:`score_experience` (the verifier).

RED_SPEC.md step 1: each prompt's group is its G online samples from the rollout engine plus
its offline trace (already truncated to the response limit, EOS last, by the dataset). Every
sample carries an explicit ``is_offline`` flag and its group id; nothing downstream infers
either from a position. Step 2's rewards come from the math verifier, the trace scored like
any other sample (the algorithm may override its reward with 1: AlgoConfig.offline_reward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from red_megatron.data.dataset import Example

if TYPE_CHECKING:
    from red_megatron.rollout.engine import RolloutSample


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
    golds: list[str] = field(default_factory=list)  # [B] the prompt's gold answer (what the sample is scored against)
    prompt_index: list[int] = field(default_factory=list)  # [B] the prompt's dataset index (Example.index)
    num_prompts: int = 0
    traces_truncated: int = 0
    # [B] the policy version (optimiser steps) that generated each sample, -1 for traces; empty when
    # not tracked (docs/ASYNC.md: with rollout.max_staleness k, a trained sample is at most k behind)
    policy_version: list[int] = field(default_factory=list)
    # [B] partial rollouts: the version that produced each token (None for traces); policy_version is then the
    # oldest of them. Empty when every sample came from one version.
    token_versions: list[list[int] | None] = field(default_factory=list)
    # [B] each online sample's experts ([tokens, layers, topk], rollout/routing.py), None for traces; empty
    # when the engine returns no routing (dense models, rollout.return_routing off)
    routed_experts: list = field(default_factory=list)
    # [B] guided_fading: the guidance tokens at the end of the sample's prompt_ids (0: unguided, the sample's
    # `guided` flag is guidance_len > 0); they are prompt, never trained on nor scored. Empty without guidance.
    guidance_len: list[int] = field(default_factory=list)

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
                reward_reasons=pick(self.reward_reasons) if self.reward_reasons else [],
                golds=pick(self.golds) if self.golds else [],
                prompt_index=pick(self.prompt_index) if self.prompt_index else [], num_prompts=n,
                traces_truncated=truncated, policy_version=pick(self.policy_version) if self.policy_version else [],
                token_versions=pick(self.token_versions) if self.token_versions else [],
                routed_experts=pick(self.routed_experts) if self.routed_experts else [],
                guidance_len=pick(self.guidance_len) if self.guidance_len else []))
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
        golds=cat("golds") if all(p.golds for p in parts) else [],
        prompt_index=cat("prompt_index") if all(p.prompt_index for p in parts) else [],
        num_prompts=sum(p.num_prompts for p in parts), traces_truncated=sum(p.traces_truncated for p in parts),
        policy_version=cat("policy_version") if all(getattr(p, "policy_version", None) for p in parts) else [],
        token_versions=cat("token_versions") if all(getattr(p, "token_versions", None) for p in parts) else [],
        routed_experts=cat("routed_experts") if all(getattr(p, "routed_experts", None) for p in parts) else [],
        guidance_len=cat("guidance_len") if all(getattr(p, "guidance_len", None) for p in parts) else [])


ScoreFn = Callable[[list[str], list[str]], tuple[list[float], object]]  # RewardScorer.score


def assemble_experience(examples: Sequence[Example], online: Sequence[Sequence[RolloutSample]], *,
                        with_offline: bool, policy_version: int | None = None,
                        guidance_len: Sequence[int] | None = None) -> Experience:
    """Prompts + their online samples (``online[g]``: prompt g's G samples, or ``[]`` for none) + the
    offline traces, in group order; unscored (rewards 0 until :func:`score_experience`).

    ``policy_version``: the version that generated the online samples (traces get -1), or None when
    versions are not tracked. ``guidance_len[g]``: guidance tokens at the end of prompt g's prompt_ids
    (guided_fading; None: no guidance in this run).
    """
    if not examples:
        raise ValueError("assemble_experience: no prompts in this step's batch")
    if online and len(online) != len(examples):
        raise ValueError(f"assemble_experience: {len(online)} groups of samples for {len(examples)} prompts")
    prompt_ids, response_ids, group, offline, engine_logp, finish, golds = [], [], [], [], [], [], []
    index: list[int] = []
    glen: list[int] = []
    token_versions: list[list[int] | None] = []
    routed: list = []
    truncated = 0
    for g, ex in enumerate(examples):
        for s in (online[g] if online else []):
            # vLLM returns at least one token (EOS included when it stops), so no response is empty
            assert s.token_ids and len(s.token_ids) == len(s.logprobs), "rollout returned an empty sample"
            prompt_ids.append(ex.prompt_ids)
            response_ids.append(list(s.token_ids))
            group.append(g)
            offline.append(False)
            engine_logp.append(list(s.logprobs))
            routed.append(getattr(s, "routed_experts", None))
            finish.append(s.finish_reason)
            golds.append(ex.gold)
            index.append(ex.index)
            glen.append(guidance_len[g] if guidance_len is not None else 0)
            token_versions.append(None if s.versions is None else list(s.versions))
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
            index.append(ex.index)
            glen.append(0)
            token_versions.append(None)
            truncated += int(ex.trace_truncated)
    per_token = any(v is not None for v in token_versions)
    if per_token:  # a sample is as old as its oldest token; traces have no behaviour version (-1)
        versions = [-1 if v is None else min(v) for v in token_versions]
    else:
        versions = [] if policy_version is None else [-1 if o else policy_version for o in offline]
    return Experience(
        prompt_ids=prompt_ids, response_ids=response_ids,
        group_id_B=torch.tensor(group, dtype=torch.int64), is_offline_B=torch.tensor(offline, dtype=torch.bool),
        rewards_B=torch.zeros(len(response_ids), dtype=torch.float32), engine_logp=engine_logp,
        finish_reasons=finish, golds=golds, prompt_index=index, num_prompts=len(examples), traces_truncated=truncated,
        policy_version=versions, token_versions=token_versions if per_token else [],
        routed_experts=routed if any(r is not None for r in routed) else [],
        guidance_len=glen if guidance_len is not None else [])


def score_experience(exp: Experience, *, score: ScoreFn, decode: Callable[[list[int]], str]) -> Experience:
    """RED_SPEC.md step 2: every sample verified against its prompt's gold, the trace like any other."""
    rewards, stats = score([decode(r) for r in exp.response_ids], exp.golds)
    exp.rewards_B = torch.tensor(rewards, dtype=torch.float32)
    exp.reward_reasons = list(getattr(stats, "reasons", []))
    return exp
