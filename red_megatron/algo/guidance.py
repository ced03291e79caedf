"""Fading external guidance (ReaLM's EAAI, arXiv 2508.12387, as this project reads it): the schedule.

At training step s of S, a prompt carries a prefix of its teacher trace (the first
``prefix_fraction`` of its tokens, EOS excluded) with probability

    p(s) = p0 · decay(s / (fade · S)),   decay(x) = 1 − x (linear) or (1 + cos πx)/2 (cosine), 0 for x >= 1

so from step fade·S on no prompt is guided and training ends as plain GRPO, the setting evaluation
uses. The guidance is part of the *prompt*: its tokens are never trained on (no response token) and
never scored (the verifier reads the continuation only). Whether prompt ``index`` is guided at step s
is a pure function of (seed, s, index): every rank, layout and resumed run draws the same.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

Decay = Literal["linear", "cosine"]


def guidance_probability(step: int, total_steps: int, *, p0: float, fade: float, decay: Decay) -> float:
    """p(step) of the module docstring (step is 0-based, total_steps >= 1)."""
    if total_steps < 1 or step < 0:
        raise ValueError(f"guidance_probability: expected step >= 0 and total_steps >= 1, got {step}, {total_steps}")
    x = step / (fade * total_steps)
    if x >= 1.0:
        return 0.0
    if decay == "linear":
        return p0 * (1.0 - x)
    if decay == "cosine":
        return p0 * 0.5 * (1.0 + math.cos(math.pi * x))
    raise ValueError(f"decay={decay!r}; expected 'linear' or 'cosine'")


def is_guided(seed: int, step: int, index: int, p: float) -> bool:
    """A Bernoulli(p) draw that depends on (seed, step, prompt index) only."""
    if p <= 0.0:
        return False
    return random.Random(f"guidance:{seed}:{step}:{index}").random() < p


def guidance_prefix(trace_ids: list[int], fraction: float, room: int) -> list[int]:
    """The first ``fraction`` of the trace's tokens (its final EOS excluded), at most ``room`` tokens."""
    body = trace_ids[:-1] if len(trace_ids) > 1 else []
    return body[: max(0, min(room, int(fraction * len(body))))]


@dataclass(frozen=True, kw_only=True)
class GuidanceSchedule:
    p0: float
    fade: float
    decay: Decay
    prefix_fraction: float
    total_steps: int
    seed: int
    # the response limit: the guidance is the start of a solution and takes part of it (the continuation gets
    # the rest, at least one token), so a guided sequence is no longer than an unguided one
    max_response_tokens: int

    @classmethod
    def from_run(cls, cfg, steps: int) -> "GuidanceSchedule":
        a = cfg.algo
        return cls(p0=a.guidance_p0, fade=a.guidance_fade, decay=a.guidance_decay, prefix_fraction=a.guidance_prefix,
                   total_steps=steps, seed=cfg.seed, max_response_tokens=cfg.data.max_response_tokens)

    def probability(self, step: int) -> float:
        return guidance_probability(step, self.total_steps, p0=self.p0, fade=self.fade, decay=self.decay)

    def guide(self, prompt_ids: list[int], trace_ids: list[int] | None, *, step: int, index: int, where: str = ""
              ) -> tuple[list[int], int]:
        """(the prompt the engine sees, the number of guidance tokens in it: 0 when unguided)."""
        if not is_guided(self.seed, step, index, self.probability(step)):
            return prompt_ids, 0
        if trace_ids is None:
            raise ValueError(f"{where}: guided_fading gives a prefix of the prompt's trace, but this row has none "
                             f"(field 'target')")
        prefix = guidance_prefix(trace_ids, self.prefix_fraction, self.max_response_tokens - 1)
        return list(prompt_ids) + prefix, len(prefix)


def guidance_metrics(p: float, guidance_len_B, rewards_B, is_offline_B) -> dict[str, float]:
    """The step's p, the fraction of online samples that were guided, their mean guidance length, and the
    online accuracy of guided and unguided samples (NaN where there are none)."""
    import torch

    on = ~is_offline_B
    glen = torch.as_tensor(guidance_len_B, dtype=torch.float64)[on]
    r = rewards_B.double()[on]
    g = glen > 0
    mean = lambda x: float(x.mean()) if x.numel() else math.nan  # noqa: E731
    return {"guide/p": float(p), "guide/guided_fraction": mean(g.double()), "guide/prefix_tokens": mean(glen[g]),
            "guide/accuracy_guided": mean(r[g]), "guide/accuracy_unguided": mean(r[~g])}
