"""Verifiable accuracy reward: last ``\\boxed{}`` vs the gold answer under math-verify.

``RewardScorer(RewardConfig(...)).score(responses, golds) -> (rewards, RewardStats)``; the
grader (grader.py: math-verify configured and wrapped, answers normalised by normalize.py)
runs in a pool of worker processes with a per-answer and a per-step deadline (pool.py).
"""
from red_megatron.reward.extract import extract_boxed, normalize_for_exact_match
from red_megatron.reward.grader import GradeOptions, grade
from red_megatron.reward.scorer import RewardConfig, RewardScorer, RewardStats
from red_megatron.reward.verify import parse_gold_answer, verify_answer, wrap_gold

__all__ = ["GradeOptions", "RewardConfig", "RewardScorer", "RewardStats", "extract_boxed", "grade",
           "normalize_for_exact_match", "parse_gold_answer", "verify_answer", "wrap_gold"]
