"""Bounded verification: a deadline on the whole batch, and hanging answers spread over the workers.

``HANG`` answers (tests.test_reward.hooked_verify) sleep forever in the worker; real
adversarial answers (power towers, huge factorials) hang sympy the same way.
"""
import time

import pytest

from red_megatron.reward import RewardConfig, RewardScorer
from red_megatron.reward.pool import DEADLINE, VerifyPool
from red_megatron.reward.scorer import answer_cost

HOOK = "tests.test_reward:hooked_verify"


def test_step_deadline_formula_and_validation():
    cfg = RewardConfig(num_workers=4, timeout_s=5.0, typical_answer_s=0.5)
    assert cfg.step_deadline_s(10) == 5.0 + 0.5 * 3
    assert RewardConfig(step_timeout_s=7.0).step_deadline_s(1000) == 7.0
    for kw in ({"step_timeout_s": 0}, {"typical_answer_s": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            RewardConfig(**kw)


def test_likely_slow_answers_go_first():
    assert answer_cost("9^{9^{9^{9}}}") > answer_cost("\\frac{1}{2}") > answer_cost("5")
    assert answer_cost("100000!") > answer_cost("12")
    assert answer_cost("0.5") < answer_cost("10^{10^{10}}")


def test_batch_deadline_bounds_a_batch_of_hanging_answers():
    # 6 hanging answers on 2 workers at a 3 s per-answer timeout would take 9 s one after another;
    # the step deadline (4 s) cuts the batch: hangs score 0 as timeouts, the real answers still count
    cfg = RewardConfig(num_workers=2, timeout_s=3.0, step_timeout_s=4.0, verify_fn=HOOK)
    with RewardScorer(cfg) as s:
        s.score(["\\boxed{1}"], ["2"])  # start the workers outside the timed call
        t0 = time.monotonic()
        rewards, stats = s.score(["\\boxed{HANG}"] * 6 + ["\\boxed{0.5}", "\\boxed{2}"], ["1"] * 6 + ["1/2", "3"])
        elapsed = time.monotonic() - t0
    assert elapsed < 4.0 + 3.0, elapsed  # the deadline, plus killing and replacing the busy workers
    assert rewards == [0.0] * 6 + [1.0, 0.0]
    assert stats.reasons[:6] == ["timeout"] * 6 and stats.timeouts == 6 and stats.deadline >= 1
    assert stats.reasons[6:] == ["correct", "wrong"]


def test_hanging_answers_run_side_by_side():
    # two hangs on two workers: killed together at one timeout, not one after the other
    with VerifyPool(fn_path=HOOK, num_workers=2, timeout_s=4.0) as pool:
        pool.map([("1", "1", 1)] * 2)
        t0 = time.monotonic()
        out = pool.map([("1", "1", 1)] * 4 + [("HANG", "1", 1)] * 2, priority=[9, 9, 9, 9, 0, 0])
        elapsed = time.monotonic() - t0
    assert [o[0] for o in out] == ["ok"] * 4 + ["timeout"] * 2
    assert 4.0 <= elapsed < 2 * 4.0, elapsed  # one after the other would take two timeouts


def test_pool_deadline_marks_unstarted_tasks():
    with VerifyPool(fn_path=HOOK, num_workers=1, timeout_s=30.0) as pool:
        pool.map([("1", "1", 1)])
        out = pool.map([("HANG", "1", 1), ("2", "2", 1), ("3", "3", 1)], deadline_s=1.0)
        assert [o[0] for o in out] == [DEADLINE] * 3
        assert pool.map([("2", "2", 1)]) == [("ok", (True, "correct"))]  # the replaced worker serves
        with pytest.raises(ValueError, match="deadline_s"):
            pool.map([("2", "2", 1)], deadline_s=0)
        with pytest.raises(ValueError, match="priority"):
            pool.map([("2", "2", 1)], priority=[1, 2])
