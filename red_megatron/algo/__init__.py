"""RED, the algorithm: Recall-Extend Dynamics (arXiv 2508.16677) as pure torch.

Read in this order; each function names the paper equation / RED_SPEC.md step it implements.
Equation numbers are the paper's as RED_SPEC.md cites them (Eq. 9, 10, 11); steps are RED_SPEC's.

  step 1  groups.assemble_groups, group_layout, check_groups
          G online samples + the offline trace per prompt, with an explicit is_offline flag on
          every sample (and, via token_terms, every token). Never inferred from position.
  step 2  advantages.group_advantages
          Â_i = (r_i − mean(r)) / (std(r) + 1e-6) over all G+1 members (or without std).
  step 3  entropy.sample_mean_entropy, entropy_partial_sums, entropy_stats_from_sums
          H_i (mean token entropy) and the batch means H^rl (online), H^sft (offline).
  step 4  entropy.relative_change                                     Eq. 11
          ΔH = |1 − H_t / H_{t−1}|
          entropy.entropy_weight, EntropyRegulator                    Eq. 9  (RED part I)
          w = clip(ΔH^sft / ΔH^rl, 1, G); 1 at the first step; G when ΔH^rl ≈ 0.
  step 5  policy_shift.group_accuracy, shift_ratio                    RED part II
          r̄ = online accuracy of the group; r^offline = π / (sg(π) + (1 − sg(π))·r̄);
          mixpolicy_ratio (π_offline = 1), onpolicy_ratio (π_offline = π), luffy_ratio (π/(π+γ)).
  step 6  token_terms.build_token_terms, aggregation_weights         Eq. 10 (normalisers)
          per-sample data -> the per-token tensors of the kernel contract (contract.TokenTerms,
          TokenKind, LossParams; docs/KERNEL_CONTRACT.md).
          loss.red_token_loss                                          Eq. 10 (the objective)
          min(r·Â, clip(r)·Â) online, w·r^offline·Â offline (unclipped), NLL, entropy, k3 KL.
          metrics.step_metrics: the per-step curves of RED_SPEC.md.
  Table 2 presets.PRESETS / get_preset / preset_stages: the nine rows, declarative, and the other
          small-reasoner recipes: dpo (Rollout DPO pairs, TokenKind.DPO), guidance (the fading schedule).
          config.AlgoConfig: the options; objective.build_objective: preset -> functions, once.

Only torch is imported here: no process groups, no megatron, no vllm. kernels/ imports
contract.py and loss.py (the one definition of the kinds and of the per-token formula). A distributed caller
reduces the sums it is handed (entropy_partial_sums) and passes global counts as numbers.
"""
from red_megatron.algo.advantages import group_advantages
from red_megatron.algo.config import AlgoConfig
from red_megatron.algo.contract import KINDS, LossParams, TokenKind, TokenTerms
from red_megatron.algo.entropy import (
    EntropyRegulator,
    EntropyStats,
    batch_entropy_stats,
    entropy_partial_sums,
    entropy_stats_from_sums,
    entropy_weight,
    relative_change,
    sample_mean_entropy,
)
from red_megatron.algo.groups import GroupedBatch, assemble_groups, check_groups, group_layout, per_token
from red_megatron.algo.loss import TokenLossOutput, clipped_surrogate, k3, red_token_loss
from red_megatron.algo.metrics import rbar_histogram, step_metrics
from red_megatron.algo.objective import RedObjective, build_objective
from red_megatron.algo.policy_shift import group_accuracy, luffy_ratio, mixpolicy_ratio, onpolicy_ratio, shift_ratio
from red_megatron.algo.presets import PRESETS, Preset, StagedPreset, get_preset, preset_stages
from red_megatron.algo.token_terms import aggregation_weights, build_token_terms

__all__ = [
    "AlgoConfig", "EntropyRegulator", "EntropyStats", "GroupedBatch", "KINDS", "LossParams", "PRESETS",
    "Preset", "RedObjective", "StagedPreset", "TokenKind", "TokenLossOutput", "TokenTerms",
    "aggregation_weights", "assemble_groups", "batch_entropy_stats", "build_objective", "build_token_terms",
    "check_groups", "clipped_surrogate", "entropy_partial_sums", "entropy_stats_from_sums", "entropy_weight",
    "get_preset", "group_accuracy", "group_advantages", "group_layout", "k3", "luffy_ratio",
    "mixpolicy_ratio", "onpolicy_ratio", "per_token", "preset_stages", "rbar_histogram", "red_token_loss",
    "relative_change", "sample_mean_entropy", "shift_ratio", "step_metrics",
]
