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

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    n: int  # online samples per prompt (G); 0: no online samples (an offline-only preset)
    temperature: float  # the same temperature the loss reads logp/entropy at (RED_SPEC.md)
    top_p: float
    max_tokens: int  # the response limit (data.max_response_tokens)
    seed: int  # the run's seed

    @classmethod
    def from_run(cls, cfg, *, online: bool) -> "SamplingConfig":
        """The run's settings (RunConfig: algo.num_online, algo.temperature, top_p, data.max_response_tokens)."""
        return cls(n=cfg.algo.num_online if online else 0, temperature=cfg.algo.temperature, top_p=cfg.top_p,
                   max_tokens=cfg.data.max_response_tokens, seed=cfg.seed)

    def seed_for(self, batch: int, replica: int) -> int:
        return self.seed * 1_000_003 + batch * 7919 + replica

    def engine_args(self, prompt_ids: list, *, batch: int, replica: int) -> dict:
        """Keyword arguments of ``RolloutEngine.generate`` for these prompts."""
        return dict(prompt_ids=prompt_ids, n=self.n, temperature=self.temperature, top_p=self.top_p,
                    max_tokens=self.max_tokens, seed=self.seed_for(batch, replica))
