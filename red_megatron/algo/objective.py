"""A preset + AlgoConfig turned into functions, once (ARCHITECTURE rule 11).

    obj = build_objective(AlgoConfig(preset="red", num_online=7))
    w = obj.offline_weight(stats)                       # RED part I (1.0 unless weight_rule='entropy')
    terms, rbar_G, adv_B = obj.token_terms(rewards_B, group_id_B, is_offline_B, response_len_B, w=w)
    out = obj.loss(logp_N, logp_old_N, entropy_N, terms)   # the reference loss of the algorithm
    MegatronPolicy(..., loss=obj.params)                  # the same scalars, given to the policy once

The loop calls these same methods for every preset; what differs was chosen here.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Callable

import torch

from red_megatron.algo.advantages import group_advantages
from red_megatron.algo.config import AlgoConfig
from red_megatron.algo.contract import LossParams, TokenKind, TokenTerms
from red_megatron.algo.dpo import build_pairs, dpo_token_terms
from red_megatron.algo.entropy import EntropyRegulator, EntropyStats
from red_megatron.algo.loss import TokenLossOutput, red_token_loss
from red_megatron.algo.policy_shift import group_accuracy
from red_megatron.algo.presets import Preset, StagedPreset, get_preset
from red_megatron.algo.token_terms import build_token_terms

RbarFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _const_rbar(value: float, rewards_B, group_id_B, is_offline_B) -> torch.Tensor:
    return torch.full((int(group_id_B.max()) + 1,), value, dtype=torch.float32)


def _no_advantage(rewards_B, group_id_B) -> torch.Tensor:
    return torch.zeros(rewards_B.shape, dtype=torch.float32)


_OFFLINE_KIND = {"none": None, "nll": TokenKind.NLL, "shift": TokenKind.OFFLINE_SHIFT, "luffy": TokenKind.OFFLINE_LUFFY}


@dataclass
class RedObjective:
    preset: Preset
    online_kind: TokenKind | None
    offline_kind: TokenKind | None
    advantages: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rbar: RbarFn | None
    regulator: EntropyRegulator | None
    aggregation: str
    loss_constant: float | None
    group_size: int
    params: LossParams  # the loss's scalars, frozen and validated (temperature included)
    assume_offline_correct: bool = False
    fixed_w: float | None = None  # AlgoConfig.fixed_w: w held constant (the regulator, if any, still updates)
    dpo_beta: float | None = None  # set for online_term='dpo': the pairs' DPO loss replaces the surrogate
    # metrics of the last token_terms call that only it can measure (DPO pairs); {} for the other presets
    last_metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def needs_reference(self) -> bool:
        """Does token_terms need the frozen reference's log-probs (and the policy's, before the update)?"""
        return self.dpo_beta is not None

    def num_pairs(self, rewards_B: torch.Tensor, group_id_B: torch.Tensor, is_offline_B: torch.Tensor) -> int:
        """This batch's DPO pairs (0 for presets without them): the caller sums it over DP ranks."""
        return 0 if self.dpo_beta is None else int(build_pairs(rewards_B, group_id_B, is_offline_B).chosen_P.numel())

    def rewards(self, rewards_B: torch.Tensor, is_offline_B: torch.Tensor) -> torch.Tensor:
        """The rewards the algorithm uses: the trace's own score, or 1 (offline_reward='assume_one')."""
        if not self.assume_offline_correct:
            return rewards_B
        return torch.where(is_offline_B, torch.ones_like(rewards_B), rewards_B)

    def offline_weight(self, stats: EntropyStats | None) -> float:
        """w_t for this step: fixed_w if set, else the regulator's (Eq. 9) or 1. Call exactly once per step;
        ``stats`` may be None only without a regulator (w then needs no entropies)."""
        if self.regulator is not None and stats is None:
            raise ValueError(f"preset {self.preset.name}: the entropy rule needs this step's entropy stats")
        w = 1.0 if self.regulator is None else self.regulator.update(stats.h_rl, stats.h_sft)
        return w if self.fixed_w is None else float(self.fixed_w)

    def token_terms(
        self,
        rewards_B: torch.Tensor,
        group_id_B: torch.Tensor,
        is_offline_B: torch.Tensor,
        response_len_B: torch.Tensor,
        *,
        w: float = 1.0,
        num_prompts: int | None = None,
        total_tokens: int | None = None,
        logp_N: torch.Tensor | None = None,
        ref_logp_N: torch.Tensor | None = None,
        num_pairs: int | None = None,
    ) -> tuple[TokenTerms, torch.Tensor | None, torch.Tensor]:
        """(TokenTerms, r̄_G or None, Â_B) for a batch of whole groups.

        num_prompts / total_tokens / num_pairs: the global counts when the batch is one DP rank's share.
        logp_N / ref_logp_N: the policy's (no-grad pass) and the frozen reference's log-probs, read only
        where ``needs_reference`` (DPO: Â_B is then each sample's DPO coefficient).
        """
        rewards_B = self.rewards(rewards_B, is_offline_B)
        self.last_metrics = {}
        if self.dpo_beta is not None:
            if logp_N is None or ref_logp_N is None:
                raise ValueError(f"preset {self.preset.name}: DPO needs logp_N and ref_logp_N (policy and reference)")
            terms, self.last_metrics = dpo_token_terms(
                logp_N=logp_N, ref_logp_N=ref_logp_N, response_len_B=response_len_B, beta=self.dpo_beta,
                pairs=build_pairs(rewards_B, group_id_B, is_offline_B), num_pairs=num_pairs)
            adv_B = torch.zeros(group_id_B.numel()).index_add(0, terms.sample_idx_N, terms.adv_N) / response_len_B
            return terms, None, adv_B
        adv_B = self.advantages(rewards_B, group_id_B)
        rbar_G = None if self.rbar is None else self.rbar(rewards_B, group_id_B, is_offline_B)
        terms = build_token_terms(
            adv_B=adv_B, is_offline_B=is_offline_B, group_id_B=group_id_B, response_len_B=response_len_B,
            offline_kind=self.offline_kind, online_kind=self.online_kind, rbar_G=rbar_G, w=w,
            aggregation=self.aggregation, num_prompts=num_prompts, group_size=self.group_size,
            total_tokens=total_tokens, loss_constant=self.loss_constant,
        )
        return terms, rbar_G, adv_B

    def loss_kwargs(self) -> dict[str, float]:
        """The scalar keywords of red_token_loss / kernels.red_loss (all but the temperature)."""
        return self.params.loss_kwargs()

    def loss(
        self,
        logp_N: torch.Tensor,
        logp_old_N: torch.Tensor,
        entropy_N: torch.Tensor | None,
        terms: TokenTerms,
        ref_logp_N: torch.Tensor | None = None,
    ) -> TokenLossOutput:
        return red_token_loss(logp_N, logp_old_N, entropy_N, terms.kind_N, terms.adv_N, terms.rbar_N, terms.w_N,
                              terms.weight_N, ref_logp_N=ref_logp_N, **self.loss_kwargs())

    def state_dict(self) -> dict:
        return {"regulator": None if self.regulator is None else self.regulator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        reg = state.get("regulator") if isinstance(state, dict) else None
        if (reg is None) != (self.regulator is None):
            raise ValueError(f"objective state has regulator={reg is not None}, preset {self.preset.name} expects {self.regulator is not None}")
        if self.regulator is not None:
            self.regulator.load_state_dict(reg)


def build_objective(cfg: AlgoConfig, stage: Preset | None = None) -> RedObjective:
    """Pick every function the loop needs from cfg.preset (or one stage of a staged preset)."""
    preset = get_preset(cfg.preset)
    if stage is None:
        if isinstance(preset, StagedPreset):
            names = [s.name for s in preset.stages]
            raise ValueError(f"preset {cfg.preset!r} has stages {names}; pass stage= (see presets.preset_stages)")
        stage = preset
    std = stage.std_normalize if cfg.std_normalize is None else cfg.std_normalize
    if stage.online:
        advantages = functools.partial(group_advantages, std_normalize=std, eps=cfg.adv_eps)
    else:  # sft: NLL ignores Â
        advantages = _no_advantage
    rbar: RbarFn | None = {
        "none": None,
        "one": functools.partial(_const_rbar, 1.0),
        "pi": functools.partial(_const_rbar, 0.0),
        "accuracy": functools.partial(group_accuracy, include_offline=cfg.rbar_source == "all"),
    }[stage.pi_offline]
    regulator = EntropyRegulator(max_weight=cfg.num_online) if stage.weight_rule == "entropy" else None
    return RedObjective(
        preset=stage,
        online_kind=TokenKind.ONLINE if stage.online else None,
        offline_kind=_OFFLINE_KIND[stage.offline_term],
        advantages=advantages,
        rbar=rbar,
        regulator=regulator,
        aggregation=cfg.aggregation if cfg.aggregation is not None else stage.aggregation,
        loss_constant=cfg.loss_constant,
        group_size=cfg.num_online * int(stage.online) + int(stage.with_offline),
        params=LossParams(temperature=cfg.temperature, eps_lo=cfg.eps_lo, eps_hi=cfg.eps_hi,
                          luffy_gamma=cfg.luffy_gamma, entropy_coef=cfg.entropy_coef, kl_coef=cfg.kl_coef),
        assume_offline_correct=cfg.offline_reward == "assume_one",
        fixed_w=cfg.fixed_w,
        dpo_beta=cfg.dpo_beta if stage.online_term == "dpo" else None,
    )
