"""Verifiable accuracy reward (RED_SPEC): 1 if the last boxed answer equals the gold, else 0.

``RewardScorer(cfg).score(responses, golds) -> (rewards, stats)``. Per response:
1. extract the last ``\\boxed{}``/``\\fbox{}``: none -> 0, counted ``no_boxed``;
2. fast path: the same string as the gold after light normalisation -> 1 without math-verify;
3. otherwise the grader (grader.py: math-verify, configured and wrapped) in the process
   pool, with a hard per-answer deadline: a hung or crashed worker is replaced and the
   answer scores 0, counted ``timeouts``/``crashes``;
4. the whole call has a deadline too (``step_timeout_s``): answers still unfinished when it
   passes score 0 as timeouts (counted again in ``deadline``), so one step's verification
   takes about ``ceil(answers / workers) * typical_answer_s + timeout_s`` at most.
Every response ends with exactly one reason, so the counts always add up to the batch.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from red_megatron.reward.extract import extract_boxed, normalize_for_exact_match
from red_megatron.reward.pool import CRASH, DEADLINE, TIMEOUT, VerifyPool
from red_megatron.reward import verify as _v

log = logging.getLogger(__name__)

_START_METHODS = ("spawn", "forkserver")


@dataclass(kw_only=True)
class RewardConfig:
    """How answers are verified.

    rel_tol: numbers are equal when ``|a - b| <= rel_tol * max(|a|, |b|)`` (or exactly equal);
        1e-9 by default, so a rounded decimal (``0.1730769`` for ``9/52``) scores 0 while an
        11-digit ``\pi`` scores 1. Applies element-wise inside lists, tuples, matrices.
        (math-verify's own default, rounding to 6 decimals, is not used.)
    timeout_s: hard deadline per answer, from hand-off to a ready worker (killed past it).
    step_timeout_s: deadline for one ``score`` call; None: ``timeout_s + typical_answer_s *
        ceil(answers to verify / num_workers)``; its clock starts once the workers are up.
    typical_answer_s: the per-answer budget in that default (5-25x what an answer takes).
    patience_s: an answer still verifying this long while others wait is set aside: it keeps its
        worker and its full timeout_s, and a fresh worker serves the queue (None: the queue waits
        for it), so answers that hang without looking slow cannot starve the rest of a step.
    """
    num_workers: int = 2  # verifier processes (math-verify runs in them, under timeouts)
    timeout_s: float = 10.0
    step_timeout_s: float | None = None
    typical_answer_s: float = 0.25  # per-answer budget in the default step deadline (measured: ~0.01-0.05 s)
    patience_s: float | None = 1.0
    rel_tol: float = 1e-9
    # how verifier processes start: 'forkserver' or 'spawn' (fork is unsafe with torch threads)
    start_method: str = "forkserver"
    exact_match_fast_path: bool = True  # score an answer equal to the gold after normalisation without math-verify
    # "module:function" run in the workers: (pred, gold, timeout_s) -> (bool, reason).
    # Swappable so tests can inject hangs and crashes; the product never changes it.
    verify_fn: str = "red_megatron.reward.verify:verify_answer"
    startup_timeout_s: float = 120.0  # the longest a verifier process may take to start and import

    def step_deadline_s(self, num_answers: int) -> float:
        """The deadline of one ``score`` call that sends ``num_answers`` to the workers."""
        if self.step_timeout_s is not None:
            return float(self.step_timeout_s)
        return self.timeout_s + self.typical_answer_s * -(-num_answers // self.num_workers)

    def __post_init__(self):
        if not isinstance(self.num_workers, int) or not 1 <= self.num_workers <= 256:
            raise ValueError(f"RewardConfig.num_workers must be an int in [1, 256], got {self.num_workers!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"RewardConfig.timeout_s must be > 0 seconds, got {self.timeout_s!r}")
        if self.start_method not in _START_METHODS:
            raise ValueError(f"RewardConfig.start_method must be one of {_START_METHODS}, "
                             f"got {self.start_method!r} (fork is unsafe with torch/threads)")
        if ":" not in self.verify_fn:
            raise ValueError(f"RewardConfig.verify_fn must be 'package.module:function', got {self.verify_fn!r}")
        if self.step_timeout_s is not None and not self.step_timeout_s > 0:
            raise ValueError(f"RewardConfig.step_timeout_s must be > 0 seconds or None, got {self.step_timeout_s!r}")
        if not self.typical_answer_s > 0:
            raise ValueError(f"RewardConfig.typical_answer_s must be > 0 seconds, got {self.typical_answer_s!r}")
        if self.patience_s is not None and not self.patience_s > 0:
            raise ValueError(f"RewardConfig.patience_s must be > 0 seconds or None, got {self.patience_s!r}")
        if not isinstance(self.rel_tol, (int, float)) or not 0 <= self.rel_tol < 1:
            raise ValueError(f"RewardConfig.rel_tol must be a number in [0, 1), got {self.rel_tol!r}")
        if not self.startup_timeout_s > 0:
            raise ValueError(f"RewardConfig.startup_timeout_s must be > 0, got {self.startup_timeout_s!r}")


@dataclass
class RewardStats:
    """Counts for one ``score`` call; ``reasons[i]`` says why response i got its reward."""
    total: int = 0
    correct: int = 0
    exact_match: int = 0  # correct through the fast path (a subset of ``correct``)
    wrong: int = 0
    no_boxed: int = 0
    parse_fail: int = 0  # the prediction (or, rarely, the gold) did not parse
    timeouts: int = 0  # killed at the per-answer deadline, or cut by the step deadline
    deadline: int = 0  # of ``timeouts``: unfinished when the step deadline passed
    set_aside: int = 0  # answers that ran past patience_s and were moved out of the queue's way
    crashes: int = 0
    errors: int = 0  # the verifier raised: a bug, scored 0
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if k != "reasons"}

    def merge(self, other: "RewardStats") -> "RewardStats":
        out = RewardStats(reasons=self.reasons + other.reasons)
        for k, v in self.as_dict().items():
            setattr(out, k, v + getattr(other, k))
        return out


def answer_cost(pred: str) -> float:
    """A cheap guess at how slow an answer is to verify (higher: slower), so the likely-slow
    ones go last: length, powers (``9^{9^{9}}``), factorials, long digit runs."""
    longest_digits = max((len(r) for r in re.findall(r"\d+", pred)), default=0)
    return len(pred) + 50.0 * pred.count("^") + 50.0 * pred.count("!") + 10.0 * max(0, longest_digits - 6)


class RewardScorer:
    """Owns the verifier pool; build one and reuse it (workers take ~1-2 s to start)."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self._pool: VerifyPool | None = None

    @property
    def pool(self) -> VerifyPool:
        if self._pool is None:  # lazily, so configs and dry runs cost nothing
            self._pool = VerifyPool(fn_path=self.cfg.verify_fn, num_workers=self.cfg.num_workers,
                                    timeout_s=self.cfg.timeout_s, start_method=self.cfg.start_method,
                                    startup_timeout_s=self.cfg.startup_timeout_s,
                                    init_path="red_megatron.reward.verify:configure",
                                    init_args=(float(self.cfg.rel_tol),), patience_s=self.cfg.patience_s,
                                    preload=_v.PRELOAD)
        return self._pool

    def score(self, responses: list[str], golds: list[str]) -> tuple[list[float], RewardStats]:
        if len(responses) != len(golds):
            raise ValueError(f"score: {len(responses)} responses but {len(golds)} gold answers")
        for i, (r, g) in enumerate(zip(responses, golds)):
            if not isinstance(r, str):
                raise TypeError(f"score: responses[{i}] must be str, got {type(r).__name__}")
            if not isinstance(g, str):
                raise TypeError(f"score: golds[{i}] must be str, got {type(g).__name__}")
        n = len(responses)
        rewards = [0.0] * n
        reasons = [""] * n
        tasks: list[tuple] = []
        task_rows: list[int] = []
        mv_timeout = max(1, int(self.cfg.timeout_s // 2))
        for i, (resp, gold) in enumerate(zip(responses, golds)):
            pred = extract_boxed(resp)
            if pred is None:
                reasons[i] = "no_boxed"
                continue
            if self.cfg.exact_match_fast_path and \
                    normalize_for_exact_match(pred) == normalize_for_exact_match(gold):
                rewards[i], reasons[i] = 1.0, "exact_match"
                continue
            tasks.append((pred, gold, mv_timeout))
            task_rows.append(i)
        n_cut = n_set_aside = 0
        if tasks:
            out = self.pool.map(tasks, deadline_s=self.cfg.step_deadline_s(len(tasks)),
                                priority=[-answer_cost(t[0]) for t in tasks])  # likely-fast first
            n_set_aside = self.pool.last_set_aside
            for i, (status, value) in zip(task_rows, out):
                if status == "ok":
                    ok, why = value
                    rewards[i] = 1.0 if ok else 0.0
                    reasons[i] = _v.CORRECT if ok else why
                elif status in (TIMEOUT, CRASH):
                    reasons[i] = status
                elif status == DEADLINE:
                    reasons[i], n_cut = TIMEOUT, n_cut + 1
                else:
                    log.warning("verifier error on response %d: %s", i, value)
                    reasons[i] = "error"
        stats = self._count(reasons)
        stats.deadline, stats.set_aside = n_cut, n_set_aside
        return rewards, stats

    @staticmethod
    def _count(reasons: list[str]) -> RewardStats:
        s = RewardStats(total=len(reasons), reasons=reasons)
        key = {"correct": "correct", "exact_match": "exact_match", "wrong": "wrong",
               "no_boxed": "no_boxed", "parse_fail": "parse_fail", "gold_parse_fail": "parse_fail",
               "timeout": "timeouts", "crash": "crashes", "error": "errors"}
        for r in reasons:
            setattr(s, key[r], getattr(s, key[r]) + 1)
        s.correct += s.exact_match
        return s

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "RewardScorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
