"""Reward: boxed-answer extraction, math-verify equivalence, and the pool's timeout/crash recovery.

One scorer (two spawned workers) serves the whole module: starting workers costs ~2 s.
Its verifier is ``hooked_verify`` below, the real one except for two magic answers that
make the worker hang or die, which is how a test reaches the pool's recovery paths for sure.
"""
import os
import time

import pytest

from red_megatron.reward import RewardConfig, RewardScorer, extract_boxed, verify_answer, wrap_gold
from red_megatron.reward.extract import normalize_for_exact_match

TIMEOUT_S = 8.0  # math-verify's own alarms get half (4 s): real answers must not time out on a loaded CI box


def hooked_verify(pred, gold, timeout_s):
    """Runs in the workers: the real verifier, but ``HANG...`` sleeps forever, ``SLEEP<s>:<pred>`` sleeps
    s seconds and then verifies pred, and ``CRASH`` kills the process."""
    if pred.startswith("HANG"):
        time.sleep(3600)
    if pred.startswith("SLEEP"):
        secs, pred = pred[len("SLEEP"):].split(":", 1)
        time.sleep(float(secs))
    if pred == "CRASH":
        os._exit(7)
    return verify_answer(pred, gold, timeout_s)


@pytest.fixture(scope="module")
def scorer():
    s = RewardScorer(RewardConfig(num_workers=2, timeout_s=TIMEOUT_S, start_method="forkserver",
                                  verify_fn="tests.test_reward:hooked_verify"))
    # start and warm both workers: sympy's first parse/compare of each kind is slow
    s.score(["\\boxed{0.5}", "\\boxed{1+x^{2}}", "\\boxed{\\{1, 2\\}}", "\\boxed{[1, 3)}"] * 2,
            ["\\frac{1}{2}", "x^2+1", "\\{2,1\\}", "[1,3)"] * 2)
    yield s
    s.close()


# --- extraction -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested \\boxed{x^{2}+\\sqrt{y_{1}}} end", "x^{2}+\\sqrt{y_{1}}"),
    ("first \\boxed{3}, corrected: \\boxed{4}", "4"),
    ("\\fbox{7}", "7"),
    ("\\boxed{1} then \\fbox{2}", "2"),
    ("\\fbox{2} then \\boxed{1}", "1"),
    ("braces \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("tex form \\boxed 5.", "5"),
    ("\\boxed{ 12 }", "12"),
    ("no box at all: 5", None),
    ("truncated \\boxed{\\frac{1}{2", None),
    ("ok \\boxed{3} then truncated \\boxed{4", "3"),
    ("empty \\boxed{}", None),
    ("\\boxedtext{9}", None),
    ("\\boxed{\\boxed{42} 41}", "\\boxed{42} 41"),  # the outermost last box, not the inner one
    ("\\boxed{\\boxed{42}}", "42"),
    ("\\boxed{1} and \\boxed{ \\fbox{2} }", "2"),
    ("\\boxed{9/52\\ }", "9/52"),  # TeX spacing at the edges is not the answer
    ("\\boxed{\\quad 7\\,}", "7"),
    ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_rejects_non_str():
    with pytest.raises(TypeError, match="str"):
        extract_boxed(None)


def test_wrap_gold_and_normalize():
    assert wrap_gold("5") == "$5$"
    assert wrap_gold(" \\frac{1}{2} ") == "$\\frac{1}{2}$"
    assert wrap_gold("$5$") == "$5$"
    assert wrap_gold("\\boxed{5}") == "\\boxed{5}"
    assert normalize_for_exact_match("$ 1, 2 $") == normalize_for_exact_match("1,2")
    assert normalize_for_exact_match("12") != normalize_for_exact_match("1 3")


def test_verify_answer_in_main_thread():
    # the worker function itself, called directly (main thread: math-verify's alarms work)
    assert verify_answer("0.5", "\\frac{1}{2}") == (True, "correct")
    assert verify_answer("3", "5") == (False, "wrong")
    assert verify_answer("5", "5")[0] is True  # a bare gold would parse to nothing unwrapped


# --- scoring through the pool --------------------------------------------------------------

def test_equivalences(scorer):
    cases = [  # (response, gold, expected reward)
        ("... so \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("\\boxed{\\dfrac{1}{2}}", "0.5", 1.0),
        ("\\boxed{5}", "$5$", 1.0),
        ("\\boxed{5}", "5", 1.0),
        ("\\boxed{1+x^{2}}", "x^2+1", 1.0),
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", 1.0),
        ("\\boxed{[1, 3)}", "[1,3)", 1.0),
        ("\\boxed{6}", "5", 0.0),
        ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
        ("first \\boxed{5} then \\boxed{6}", "5", 0.0),
        ("the answer is 5", "5", 0.0),
    ]
    rewards, stats = scorer.score([c[0] for c in cases], [c[1] for c in cases])
    assert rewards == [c[2] for c in cases], list(zip(rewards, stats.reasons))
    assert stats.total == len(cases)
    assert stats.no_boxed == 1 and stats.reasons[-1] == "no_boxed"
    assert stats.correct == sum(c[2] for c in cases)
    assert stats.exact_match >= 1  # "5" vs "5" never reached math-verify
    assert stats.reasons[4] == "exact_match"
    assert stats.timeouts == stats.crashes == stats.errors == 0
    # every response has exactly one reason, so the counts add up
    assert stats.correct + stats.wrong + stats.no_boxed + stats.parse_fail + stats.timeouts + stats.crashes \
        + stats.errors == stats.total


def test_empty_batch(scorer):
    rewards, stats = scorer.score([], [])
    assert rewards == [] and stats.total == 0


def test_hung_worker_is_killed_scored_zero_and_pool_recovers(scorer):
    respawns = scorer.pool.respawns
    t0 = time.monotonic()
    rewards, stats = scorer.score(["\\boxed{HANG}", "\\boxed{2}", "\\boxed{0.25}"], ["1", "2", "\\frac{1}{4}"])
    elapsed = time.monotonic() - t0
    assert rewards == [0.0, 1.0, 1.0]
    assert stats.timeouts == 1 and stats.reasons[0] == "timeout"
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 5
    assert scorer.pool.respawns == respawns + 1
    rewards, stats = scorer.score(["\\boxed{\\frac{3}{4}}"] * 3, ["0.75"] * 3)  # the pool still works
    assert rewards == [1.0] * 3 and stats.timeouts == 0


def test_crashed_worker_is_replaced_scored_zero_and_counted(scorer):
    respawns = scorer.pool.respawns
    rewards, stats = scorer.score(["\\boxed{CRASH}", "\\boxed{0.2}", "\\boxed{CRASH}"], ["1", "1/5", "1"])
    assert rewards == [0.0, 1.0, 0.0]
    assert stats.crashes == 2 and stats.reasons[0] == stats.reasons[2] == "crash"
    assert scorer.pool.respawns == respawns + 2
    rewards, stats = scorer.score(["\\boxed{7}", "\\boxed{8}"], ["7.0", "9"])
    assert rewards == [1.0, 0.0] and stats.crashes == 0


def test_pathological_answer_times_out(scorer):
    # a real hang, no hook: sympy tries to evaluate a tower of powers; math-verify's own alarm (half the
    # deadline) stops it inside the worker, so it scores 0 as a timeout without a respawn
    t0 = time.monotonic()
    rewards, stats = scorer.score(["\\boxed{10^{10^{10^{10^{10}}}}}", "\\boxed{3}"], ["5", "3"])
    assert rewards == [0.0, 1.0]
    assert stats.reasons[0] == "timeout" and stats.timeouts == 1
    assert time.monotonic() - t0 < TIMEOUT_S + 5


def test_score_rejects_bad_input(scorer):
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        scorer.score(["a", "b"], ["1"])
    with pytest.raises(TypeError, match=r"golds\[0\] must be str"):
        scorer.score(["\\boxed{1}"], [1])


@pytest.mark.parametrize("kwargs,field", [
    ({"num_workers": 0}, "num_workers"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"start_method": "fork"}, "start_method"),
    ({"verify_fn": "no_colon"}, "verify_fn"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RewardConfig(**kwargs)


def test_bad_verify_fn_path_fails_in_caller():
    s = RewardScorer(RewardConfig(verify_fn="red_megatron.reward.verify:does_not_exist"))
    with pytest.raises(ValueError, match="does_not_exist"):
        s.score(["\\boxed{1}"], ["2"])
