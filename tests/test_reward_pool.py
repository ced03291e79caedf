"""Bounded verification: a deadline on the whole batch, and hanging answers spread over the workers.

``HANG`` answers (tests.test_reward.hooked_verify) sleep forever in the worker; real
adversarial answers (power towers, huge factorials) hang sympy the same way.
"""
import os
import time

import pytest

from red_megatron.reward import RewardConfig, RewardScorer
from red_megatron.reward.pool import DEADLINE, VerifyPool
from red_megatron.reward.scorer import answer_cost
from red_megatron.reward.verify import PRELOAD

HOOK = "tests.test_reward:hooked_verify"
# what the scorer gives its pool: grading options plus a warm-up grade before a worker says ready,
# math-verify imported once in the fork server
WARM = {"init_path": "red_megatron.reward.verify:configure", "init_args": (1e-9,), "preload": PRELOAD}


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by someone) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.parametrize("patience_s", [None, 0.3])
def test_a_hang_that_looks_ordinary_is_set_aside(patience_s):
    """One worker, a hang handed out first (the worst case: nothing marks it as slow): with patience it
    is set aside and the queue behind it is verified before the batch deadline; without, the queue waits
    for it and the deadline cuts everything."""
    with VerifyPool(fn_path=HOOK, num_workers=1, timeout_s=3.0, patience_s=patience_s, **WARM) as pool:
        pool.map([("1", "1", 1)])
        pids = {w.proc.pid for w in pool._workers}
        out = pool.map([("HANG", "1", 1)] + [(str(k), str(k), 1) for k in range(5)], deadline_s=2.0)
        statuses = [o[0] for o in out]
        if patience_s is None:
            assert statuses == [DEADLINE] * 6 and pool.last_set_aside == 0
        else:
            assert statuses == [DEADLINE] + ["ok"] * 5, out
            assert all(o[1] == (True, "correct") for o in out[1:])
            assert pool.last_set_aside >= 1 and pool.set_aside_total == pool.last_set_aside
        # whatever was set aside is gone: one worker again, the hanging process killed
        assert len(pool._workers) == 1 and pool.num_workers == 1
        assert not any(_alive(p) for p in pids)
        assert pool.map([("2", "2", 1)]) == [("ok", (True, "correct"))]


def test_a_set_aside_answer_keeps_its_full_timeout_and_its_result():
    """An answer slower than patience but within timeout_s is still verified (set aside is not killed),
    its worker leaves the pool afterwards, and a hang set aside still ends at its own timeout."""
    # timeout_s is wide so that the bound below separates one timeout (5 s) from two in a row (10 s) with 4 s to
    # spare for a loaded host (at 2.5 s it failed once at 5.46 s under a load of ~4, session 9)
    timeout_s = 5.0
    with VerifyPool(fn_path=HOOK, num_workers=1, timeout_s=timeout_s, patience_s=0.5, **WARM) as pool:
        pool.map([("1", "1", 1)])
        t0 = time.monotonic()
        out = pool.map([("SLEEP1.0:3", "3", 1), ("HANG", "1", 1), ("4", "4", 1), ("5", "6", 1)])
        elapsed = time.monotonic() - t0
        assert out == [("ok", (True, "correct")), ("timeout", None), ("ok", (True, "correct")),
                       ("ok", (False, "wrong"))], out
        assert pool.last_set_aside >= 2  # the sleeper and the hang (an ordinary answer too, if the CPU is busy)
        assert timeout_s <= elapsed < 2 * timeout_s - 1.0, elapsed  # the hang's own timeout, not two in a row
        assert len(pool._workers) == 1


def test_set_aside_is_bounded():
    """max_set_aside=1: the second hang cannot be set aside, so the queue behind it waits (and is cut)."""
    with VerifyPool(fn_path=HOOK, num_workers=1, timeout_s=5.0, patience_s=0.2, max_set_aside=1,
                    **WARM) as pool:
        pool.map([("1", "1", 1)])
        out = pool.map([("HANG", "1", 1), ("HANG", "1", 1), ("2", "2", 1)], deadline_s=2.0)
        assert [o[0] for o in out] == [DEADLINE] * 3 and pool.last_set_aside == 1
        assert len(pool._workers) == 1
    for kw in ({"patience_s": 0}, {"max_set_aside": -1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            VerifyPool(fn_path=HOOK, num_workers=1, timeout_s=1.0, **kw)
    with pytest.raises(ValueError, match="patience_s"):
        RewardConfig(patience_s=0)


def test_scorer_verifies_the_rest_of_a_step_around_ordinary_looking_hangs():
    """The grader report's worst case, shrunk: hangs that look like short answers (handed out first) on 2
    workers; every ordinary answer still scores within the step deadline, the hangs as timeouts."""
    cfg = RewardConfig(num_workers=2, timeout_s=3.0, patience_s=0.3, verify_fn=HOOK)
    ordinary = [(f"\\frac{{{k}}}{{{k + 1}}}", f"{k}/{k + 1}") for k in range(1, 9)]
    with RewardScorer(cfg) as s:
        s.score(["\\boxed{1}"] * 2, ["1"] * 2)
        resps = ["\\boxed{HANG}"] * 4 + [f"\\boxed{{{p}}}" for p, _ in ordinary]
        rewards, stats = s.score(resps, ["1"] * 4 + [g for _, g in ordinary])
    assert rewards == [0.0] * 4 + [1.0] * 8, stats.reasons
    assert stats.timeouts == 4 and stats.set_aside >= 4 and stats.deadline <= 4
