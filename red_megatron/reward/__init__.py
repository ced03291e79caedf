"""Verifiable accuracy reward: last ``\\boxed{}`` vs the gold answer under math-verify.

``RewardScorer(RewardConfig(...)).score(responses, golds) -> (rewards, RewardStats)``; the
verifier runs in a pool of worker processes with a hard per-answer deadline (pool.py).
"""
from red_megatron.reward.extract import extract_boxed, normalize_for_exact_match
from red_megatron.reward.scorer import RewardConfig, RewardScorer, RewardStats
from red_megatron.reward.verify import parse_gold_answer, verify_answer, wrap_gold

__all__ = ["RewardConfig", "RewardScorer", "RewardStats", "extract_boxed", "normalize_for_exact_match",
           "parse_gold_answer", "verify_answer", "wrap_gold"]
