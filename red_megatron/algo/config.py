"""AlgoConfig: the *option* fields of RED_SPEC.md, for callers (trainer, recipes).

The math functions never see this object: ``objective.build_objective`` reads it once and
hands numbers to them. Optimiser options (lr, betas, schedule) belong to the optimiser's own
config; a preset's lr/epochs overrides are read from the Preset by the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from red_megatron.algo.contract import DEFAULT_PARAMS, check_loss_scalar
from red_megatron.algo.presets import PRESETS, preset_stages
from red_megatron.algo.token_terms import AGGREGATIONS


@dataclass(kw_only=True)
class AlgoConfig:
    # the algorithm, one row of the paper's Table 2: red, grpo, sft, luffy, ... (red_megatron/algo/presets.py)
    preset: str = "red"
    num_online: int = 7  # G online samples per prompt (the group has G+1 with the trace)
    temperature: float = DEFAULT_PARAMS.temperature  # sampling temperature = the temperature of logp/entropy in the loss
    std_normalize: bool | None = None  # None: the preset's choice (luffy: False, others: True)
    adv_eps: float = 1e-6  # Â = (r − mean)/(std + adv_eps)
    rbar_source: Literal["online", "all"] = "online"  # r̄ from the G online samples, or all G+1
    offline_reward: Literal["verify", "assume_one"] = "verify"  # score the trace, or assume 1
    eps_lo: float = DEFAULT_PARAMS.eps_lo  # clip(r, 1 − eps_lo, 1 + eps_hi); eps_hi > eps_lo is clip-higher
    eps_hi: float = DEFAULT_PARAMS.eps_hi  # upper clip of the ratio, 1 + eps_hi (DAPO's clip-higher: 0.28)
    aggregation: Literal["sequence_mean", "token_mean", "constant"] | None = None  # None: preset's
    loss_constant: float | None = None  # C for aggregation='constant' (e.g. the max response length)
    luffy_gamma: float = DEFAULT_PARAMS.luffy_gamma  # f(π) = π/(π + γ)
    entropy_coef: float = DEFAULT_PARAMS.entropy_coef  # entropy bonus (off in the paper)
    kl_coef: float = DEFAULT_PARAMS.kl_coef  # k3 KL to a reference policy (off in the paper)
    # off-policy correction (algo/off_policy.py, docs/ASYNC.md): decoupled PPO with a truncated importance
    # weight min(π_old/π_behaviour, tis_cap) on online tokens. 'auto': on iff rollout.max_staleness > 0;
    # 'tis' also at k = 0 (against the train/inference numeric mismatch). tis_mask_bound: mask whole samples
    # whose geometric-mean ratio leaves [1/bound, bound] (None: no masking).
    off_policy: Literal["auto", "none", "tis"] = "auto"
    tis_cap: float = 2.0  # C of the truncated importance weight min(π_old/π_behaviour, C)
    tis_mask_bound: float | None = None  # mask samples whose geometric-mean ratio leaves [1/bound, bound]
    # online tokens whose behaviour log-prob is NaN/inf get ρ = 0 and are counted; past this fraction of a
    # step's online tokens the step is refused (the engine is broken, not unlucky)
    tis_max_nonfinite: float = 1e-3
    # w held at this value every step instead of the preset's (1.0, or Eq. 9's): the `red_wconst` control
    # of STUDY_DESIGN §6.5 (red with w fixed at red's mean w). The regulator still logs ΔH^rl, ΔH^sft.
    fixed_w: float | None = None
    # the no-grad old-policy pass before the update. 'auto': skipped where it is exactly redundant (no
    # entropy rule needs this step's entropies before the update, no off-policy weight needs π_old): the
    # update takes the ratio's denominator, and the logged entropies, from its own forward. 'always': run it.
    old_logprobs: Literal["auto", "always"] = "auto"
    # MoE policies: 'rollout' replays in the old-policy pass and the update the experts the engine routed each
    # sampled token to (needs rollout.return_routing; offline traces route live); 'none': the trainer routes
    routing_replay: Literal["none", "rollout"] = "none"
    # rollout_dpo (algo/dpo.py): β of the DPO margin β·[(S_c − R_c) − (S_r − R_r)] against the frozen reference
    dpo_beta: float = 0.1
    # guided_fading (algo/guidance.py): a prompt carries a prefix of its trace with probability
    # p(step) = guidance_p0·decay(step / (guidance_fade·steps)), 0 from that step on
    guidance_p0: float = 1.0
    guidance_fade: float = 0.5  # the fraction of the run's steps after which no prompt is guided
    guidance_decay: Literal["linear", "cosine"] = "linear"  # decay(x) = 1 − x, or (1 + cos πx)/2
    guidance_prefix: float = 0.5  # the fraction of the trace's tokens given (they take as much of the response limit)

    def __post_init__(self) -> None:
        if self.routing_replay not in ("none", "rollout"):
            raise ValueError(f"AlgoConfig.routing_replay={self.routing_replay!r}; expected 'none' or 'rollout'")
        if self.preset not in PRESETS:
            raise ValueError(f"AlgoConfig.preset={self.preset!r}; valid presets: {', '.join(PRESETS)}")
        if not (isinstance(self.num_online, int) and self.num_online >= 1):
            raise ValueError(f"AlgoConfig.num_online (G) must be an int >= 1, got {self.num_online!r}")
        # the loss scalars: the contract's one statement of their ranges
        for name in ("temperature", "eps_lo", "eps_hi", "luffy_gamma", "entropy_coef", "kl_coef", "tis_cap",
                     "dpo_beta"):
            check_loss_scalar(name, getattr(self, name), where="algo")
        check_loss_scalar("tis_mask_bound", self.tis_mask_bound, where="algo", optional=True)
        if not 0 < self.adv_eps < 1:
            raise ValueError(f"AlgoConfig.adv_eps must be in (0, 1), got {self.adv_eps}")
        if self.rbar_source not in ("online", "all"):
            raise ValueError(f"AlgoConfig.rbar_source={self.rbar_source!r}; expected 'online' or 'all'")
        if self.offline_reward not in ("verify", "assume_one"):
            raise ValueError(f"AlgoConfig.offline_reward={self.offline_reward!r}; expected 'verify' or 'assume_one'")
        if self.aggregation is not None and self.aggregation not in AGGREGATIONS:
            raise ValueError(f"AlgoConfig.aggregation={self.aggregation!r}; expected None or one of {AGGREGATIONS}")
        uses_constant = self.aggregation == "constant" or any(s.aggregation == "constant" for s in preset_stages(self.preset))
        if uses_constant and not (self.loss_constant is not None and self.loss_constant > 0):
            raise ValueError(f"AlgoConfig.loss_constant must be > 0 with aggregation='constant', got {self.loss_constant}")
        if self.off_policy not in ("auto", "none", "tis"):
            raise ValueError(f"AlgoConfig.off_policy={self.off_policy!r}; expected 'auto', 'none' or 'tis'")
        if self.old_logprobs not in ("auto", "always"):
            raise ValueError(f"AlgoConfig.old_logprobs={self.old_logprobs!r}; expected 'auto' or 'always'")
        if not (isinstance(self.tis_max_nonfinite, (int, float)) and 0 <= self.tis_max_nonfinite <= 1):
            raise ValueError(f"AlgoConfig.tis_max_nonfinite must be a fraction in [0, 1], got {self.tis_max_nonfinite!r}")
        if self.fixed_w is not None and not (isinstance(self.fixed_w, (int, float)) and 0 < self.fixed_w < float("inf")):
            raise ValueError(f"AlgoConfig.fixed_w must be None or a finite number > 0, got {self.fixed_w!r}")
        if not 0 <= self.guidance_p0 <= 1:
            raise ValueError(f"AlgoConfig.guidance_p0 must be in [0, 1], got {self.guidance_p0}")
        if not 0 < self.guidance_fade <= 1:
            raise ValueError(f"AlgoConfig.guidance_fade (fraction of the steps) must be in (0, 1], got {self.guidance_fade}")
        if self.guidance_decay not in ("linear", "cosine"):
            raise ValueError(f"AlgoConfig.guidance_decay={self.guidance_decay!r}; expected 'linear' or 'cosine'")
        if not 0 < self.guidance_prefix <= 1:
            raise ValueError(f"AlgoConfig.guidance_prefix (fraction of the trace) must be in (0, 1], got {self.guidance_prefix}")
        for stage in preset_stages(self.preset):
            if stage.online_term == "dpo" and self.num_online < 2:
                raise ValueError(f"AlgoConfig.num_online={self.num_online} with preset stage {stage.name!r}: a DPO pair "
                                 "needs a correct and a wrong sample of the same prompt (num_online >= 2)")
            std = stage.std_normalize if self.std_normalize is None else self.std_normalize
            group = self.num_online * int(stage.online) + int(stage.with_offline)
            if stage.online and std and group < 2:
                raise ValueError(
                    f"AlgoConfig.num_online={self.num_online} with preset stage {stage.name!r} gives groups of {group}; "
                    "the unbiased group std needs >= 2 members (num_online >= 2, or std_normalize=False)"
                )
