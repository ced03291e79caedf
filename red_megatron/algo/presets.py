"""The paper's Table 2 as declarative presets (RED_SPEC "The paper's Table 2 as presets").

A preset only *names* choices; ``objective.build_objective`` turns them into functions once,
at build time, so the training loop never switches on strings.

| preset             | online | offline_term | pi_offline | weight_rule | notes                      |
|--------------------|--------|--------------|------------|-------------|----------------------------|
| sft                | no     | nll          | -          | one         | token mean, lr 5e-5, 3 ep. |
| grpo               | yes    | none         | -          | one         |                            |
| sft_then_grpo      | stage 1 = sft, stage 2 = grpo from stage 1's checkpoint                  |
| mixpolicy          | yes    | shift        | one (r̄=1)  | one         | r^offline = π              |
| onpolicy_offline   | yes    | shift        | pi (r̄=0)   | one         | r^offline = 1, ∇log π      |
| luffy              | yes    | luffy        | -          | one         | Â without std; f(π)=π/(π+γ)|
| red_entropy (I)    | yes    | shift        | one        | entropy     |                            |
| red_shift (II)     | yes    | shift        | accuracy   | one         |                            |
| red (ALL)          | yes    | shift        | accuracy   | entropy     |                            |
| rollout_dpo        | yes    | none         | -          | one         | DPO on (correct, wrong) pairs |
| guided_fading      | yes    | none         | -          | one         | GRPO; fading trace prefix  |
| phi4_recipe        | stage 1 = sft, stage 2 = rollout_dpo, stage 3 = grpo, each from the last's checkpoint |

Beyond the paper's table: ``rollout_dpo`` (Phi-4-Mini-Reasoning's Rollout DPO: pairs of a verified-correct
and a verified-wrong sample of the same prompt, DPO against the frozen policy of the stage's start;
algo/dpo.py) and ``guided_fading`` (ReaLM's EAAI as this project reads it: a prompt carries a prefix of its
trace with a probability that fades to 0; algo/guidance.py, applied where the rollout builds its prompts).

Offline terms are never clipped in any preset (LUFFY's "no clip"); online tokens always use
the clipped surrogate with AlgoConfig's ε_lo, ε_hi.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

OfflineTerm = Literal["none", "nll", "shift", "luffy"]
PiOffline = Literal["none", "one", "pi", "accuracy"]
WeightRule = Literal["one", "entropy"]
OnlineTerm = Literal["clip", "dpo"]


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    online: bool  # G online samples per prompt?
    offline_term: OfflineTerm  # what the prompt's offline trace contributes
    pi_offline: PiOffline = "none"  # for offline_term == "shift": 1, π, or the accuracy shift
    weight_rule: WeightRule = "one"  # w = 1, or the entropy regulator (RED part I)
    std_normalize: bool = True  # Â divided by the group std
    aggregation: Literal["sequence_mean", "token_mean", "constant"] = "sequence_mean"
    lr: float | None = None  # override of the optimiser's lr (None: the run's)
    epochs: int | None = None  # passes over the data (None: the run's step count)
    online_term: OnlineTerm = "clip"  # the clipped surrogate with Â, or DPO on (correct, wrong) pairs
    guidance: bool = False  # prompts may carry a fading prefix of their trace (guided_fading)

    @property
    def reads_traces(self) -> bool:
        """The preset needs the data's offline trace column (for its offline samples, or its guidance)."""
        return self.offline_term != "none" or self.guidance

    def __post_init__(self) -> None:
        if not self.online and self.offline_term == "none":
            raise ValueError(f"preset {self.name}: needs online samples or an offline term")
        if (self.offline_term == "shift") != (self.pi_offline != "none"):
            raise ValueError(f"preset {self.name}: pi_offline must be set exactly when offline_term == 'shift'")
        if self.weight_rule == "entropy" and not (self.online and self.offline_term != "none"):
            raise ValueError(f"preset {self.name}: the entropy rule needs both online and offline samples")
        if self.online_term == "dpo" and not (self.online and self.offline_term == "none"):
            raise ValueError(f"preset {self.name}: online_term='dpo' pairs online samples only (offline_term 'none')")
        if self.guidance and not (self.online and self.offline_term == "none"):
            raise ValueError(f"preset {self.name}: guidance needs online samples and no offline term (the trace "
                             f"would follow a guided prompt)")

    @property
    def with_offline(self) -> bool:
        """Does each group include the prompt's offline trace?"""
        return self.offline_term != "none"


@dataclass(frozen=True, kw_only=True)
class StagedPreset:
    """Run the stages one after another, each from the previous stage's final checkpoint."""

    name: str
    stages: tuple[Preset, ...]


SFT = Preset(name="sft", online=False, offline_term="nll", aggregation="token_mean", lr=5e-5, epochs=3)
GRPO = Preset(name="grpo", online=True, offline_term="none")
MIXPOLICY = Preset(name="mixpolicy", online=True, offline_term="shift", pi_offline="one")
ONPOLICY_OFFLINE = Preset(name="onpolicy_offline", online=True, offline_term="shift", pi_offline="pi")
LUFFY = Preset(name="luffy", online=True, offline_term="luffy", std_normalize=False)
RED_ENTROPY = Preset(name="red_entropy", online=True, offline_term="shift", pi_offline="one", weight_rule="entropy")
RED_SHIFT = Preset(name="red_shift", online=True, offline_term="shift", pi_offline="accuracy")
RED = Preset(name="red", online=True, offline_term="shift", pi_offline="accuracy", weight_rule="entropy")
SFT_THEN_GRPO = StagedPreset(name="sft_then_grpo", stages=(SFT, GRPO))
ROLLOUT_DPO = Preset(name="rollout_dpo", online=True, offline_term="none", online_term="dpo")
GUIDED_FADING = Preset(name="guided_fading", online=True, offline_term="none", guidance=True)
PHI4_RECIPE = StagedPreset(name="phi4_recipe", stages=(SFT, ROLLOUT_DPO, GRPO))

AnyPreset = Union[Preset, StagedPreset]
PRESETS: dict[str, AnyPreset] = {
    p.name: p
    for p in (SFT, GRPO, SFT_THEN_GRPO, MIXPOLICY, ONPOLICY_OFFLINE, LUFFY, RED_ENTROPY, RED_SHIFT, RED,
              ROLLOUT_DPO, GUIDED_FADING, PHI4_RECIPE)
}


def get_preset(name: str) -> AnyPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def preset_stages(name: str) -> tuple[Preset, ...]:
    """The single-stage presets to run in order (one for all but the staged presets)."""
    p = get_preset(name)
    return p.stages if isinstance(p, StagedPreset) else (p,)
