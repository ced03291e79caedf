"""How online samples are drawn: one :class:`SamplingConfig`, bound once when the run is built.

Every rollout implementation (colocated engines in the trainer's processes, disaggregated engine
processes, streaming partial rollouts) asks this object for its sampling arguments, so the
temperature, nucleus, length limit, group size and seed rule live in one place.

The seed rule: batch ``b``'s generation for replica ``r`` is seeded with
``seed * 1_000_003 + b * 7919 + r``. With one replica per engine a replica's samples therefore do
not depend on the layout (colocated, disaggregated at staleness 0, any DP size), which is what lets
the layout tier and the k = 0 test compare runs bit for bit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from red_megatron.algo.guidance import GuidanceSchedule


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    n: int  # online samples per prompt (G); 0: no online samples (an offline-only preset)
    temperature: float  # the same temperature the loss reads logp/entropy at (RED_SPEC.md)
    top_p: float
    max_tokens: int  # the response limit (data.max_response_tokens)
    seed: int  # the run's seed
    guidance: GuidanceSchedule | None = None  # guided_fading: prompts may carry a prefix of their trace

    @classmethod
    def from_run(cls, cfg, *, online: bool, guidance: GuidanceSchedule | None = None) -> "SamplingConfig":
        """The run's settings (algo.num_online, algo.temperature, rollout.top_p, data.max_response_tokens)."""
        return cls(n=cfg.algo.num_online if online else 0, temperature=cfg.algo.temperature, top_p=cfg.rollout.top_p,
                   max_tokens=cfg.data.max_response_tokens, seed=cfg.seed, guidance=guidance)

    def prompts(self, examples: list, *, batch: int) -> tuple[list, list[int]]:
        """The examples as the engine sees them (a guided one's prompt_ids end with its guidance) and the
        number of guidance tokens of each (0: unguided). Without guidance: the examples as they are."""
        if self.guidance is None:
            return list(examples), [0] * len(examples)
        out, lens = [], []
        for ex in examples:
            ids, k = self.guidance.guide(ex.prompt_ids, ex.trace_ids, step=batch, index=ex.index,
                                         where=f"row {ex.row} ({ex.data_source})")
            out.append(dataclasses.replace(ex, prompt_ids=ids) if k else ex)
            lens.append(k)
        return out, lens

    def seed_for(self, batch: int, replica: int) -> int:
        return self.seed * 1_000_003 + batch * 7919 + replica

    def engine_args(self, prompt_ids: list, *, batch: int, replica: int, guidance_len: list[int] | None = None) -> dict:
        """Keyword arguments of ``RolloutEngine.generate`` for these prompts. ``guidance_len`` (from :meth:`prompts`):
        a guided prompt's guidance is the start of its solution, so it takes that much of the response limit and
        every sequence stays within the window the run was sized for."""
        limit = self.max_tokens
        if guidance_len is not None and any(guidance_len):
            limit = [self.max_tokens - k for k in guidance_len]
        return dict(prompt_ids=prompt_ids, n=self.n, temperature=self.temperature, top_p=self.top_p,
                    max_tokens=limit, seed=self.seed_for(batch, replica))
