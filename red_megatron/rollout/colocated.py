"""Rollouts from engines in the trainer's own processes (``rollout.placement='colocated'``).

rollout/placement.py decides which ranks build an engine and which replicas each engine serves;
this class only follows that plan. A step: every rank draws its replica's prompts; the ranks that
generate gather their engine's prompts, generate, verify (a replica's source rank only) and hand
each served replica its part; every rank of a replica then receives it from the replica's source.
Offline-only presets (sft) build no engine: the source rank assembles the traces and scores them.
"""
from __future__ import annotations

from red_megatron.experience import Experience, assemble_experience, score_experience
from red_megatron.rollout.interface import Rollout
from red_megatron.rollout.placement import gather_prompts, plan_rollout


class ColocatedRollout(Rollout):
    def __init__(self, cfg, *, groups, policy, loader, sampling, with_offline: bool, tokenizer, scorer):
        self.g, self.loader, self.sampling, self.with_offline = groups, loader, sampling, with_offline
        self.tokenizer, self.scorer = tokenizer, scorer
        online = sampling.n > 0
        self.placement = plan_rollout(groups, tp_infer=cfg.rollout.tp_infer, executor=cfg.rollout.executor,
                                      online=online)
        self.engine = self.refit_plan = None
        if self.placement.builds_engine:
            from red_megatron.rollout.engine import RolloutEngine
            from red_megatron.rollout.refit import RefitPlan

            self.engine = RolloutEngine(cfg.model_dir, cfg.rollout)
            self.refit_plan = RefitPlan.for_engine(self.engine, policy.hf_weight_specs(),
                                                   bucket_bytes=int(cfg.rollout.refit_bucket_mb * 2**20))

    @property
    def local_engine(self):
        return self.engine

    def take(self, step: int) -> Experience:
        exp = self.experience(self.loader.next_batch(), step)
        if self.sampling.guidance is not None:
            from red_megatron.algo.guidance import guidance_metrics

            self._guide_metrics = guidance_metrics(self.sampling.guidance.probability(step), exp.guidance_len,
                                                   exp.rewards_B, exp.is_offline_B)
        return exp

    def step_metrics(self, since: float) -> dict:
        return dict(getattr(self, "_guide_metrics", {}))

    def experience(self, examples: list, step: int) -> Experience:
        """This replica's experience of ``examples`` (its prompts of batch ``step``) on every rank."""
        g, plan, online = self.g, self.placement, self.sampling.n > 0
        exp = None
        if plan.generates or (not online and g.is_mp_src):
            batches = gather_prompts(plan, g.dp_rank, examples) if online else [examples]
            # guided_fading: a guided prompt ends with its guidance, so the engine continues it and the policy
            # trains on the continuation only (the guidance is prompt: no logp, no reward)
            flat, guidance_len = self.sampling.prompts([ex for b in batches for ex in b], batch=step)
            samples = []
            if online:
                # seeded by the first replica served: with one replica per engine, a replica's samples do
                # not depend on the layout
                first = plan.served_replicas[0] if plan.served_replicas else g.dp_rank
                samples = self.engine.generate(**self.sampling.engine_args(
                    [ex.prompt_ids for ex in flat], batch=step, replica=first, guidance_len=guidance_len))
            both = assemble_experience(flat, samples, with_offline=self.with_offline,
                                       guidance_len=guidance_len if self.sampling.guidance is not None else None)
            # Ranks of the engine that are no replica's source only join its collective: they skip verification.
            if g.is_mp_src:
                both = score_experience(both, score=self.scorer.score, decode=self._decode)
            parts = both.split([len(b) for b in batches],
                               [sum(int(ex.trace_truncated) for ex in b) * self.with_offline for b in batches]) \
                if len(batches) > 1 else [both]
            served = plan.served_replicas if online else (g.dp_rank,)
            exp = parts[served.index(g.dp_rank)] if g.is_mp_src else None
        return g.broadcast_from_mp_src(exp)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def refit(self, stream, version: int, step: int) -> dict:
        if self.sampling.n == 0:  # no engine, and the policy streams nothing
            return {}
        if not self.placement.generates:  # no engine here, or an idle one: walk the collective only
            for _ in stream:
                pass
            return {}
        from red_megatron.rollout.refit import refit

        stats = refit(self.engine, self.refit_plan, stream)
        return {"refit/seconds": stats.seconds, "refit/buckets": stats.buckets, "refit/gbytes": stats.bytes / 1e9,
                "refit/fast": float(stats.fast)}  # 1: in-place copies (rollout/fast_refit.py), 0: vLLM's reload

    def loader_state(self, step: int) -> dict:
        return self.loader.state_dict()

    def resume(self, step: int, loader_state: dict) -> None:
        self.loader.load_state_dict(loader_state)

    def close(self, run_dir=None) -> None:
        pass  # the in-process engines go with the process (vLLM's own atexit)
