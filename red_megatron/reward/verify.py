"""The verifier workers' entry points: one extracted answer against one gold answer.

Runs inside a verifier worker's main thread (see pool.py): math-verify's own timeouts use
``signal.alarm``, which only works there. Its alarms take whole seconds and cover one
parse or comparison each, so they are a first line; the pool's kill deadline is the guarantee.

The grading itself is grader.py (math-verify, configured and wrapped); the comparison
options (relative tolerance) reach each worker once, through :func:`configure`, which the
scorer passes to the pool as its initializer.
"""
from __future__ import annotations

import re

from red_megatron.reward.grader import (CORRECT, GOLD_PARSE_FAIL, MV_TIMEOUT, PARSE_FAIL, WRONG, GradeOptions,
                                        grade, parse_gold, quiet_math_verify)

__all__ = ["CORRECT", "WRONG", "PARSE_FAIL", "GOLD_PARSE_FAIL", "MV_TIMEOUT", "configure", "verify_answer",
           "parse_gold_answer", "gold_parses", "wrap_gold"]

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_LATEX_DELIMS = ("\\(", "\\[", "\\boxed")

# What a verifier worker imports on its first grade (~0.25 s): the pool's fork server imports it once.
PRELOAD = ("sympy", "latex2sympy2_extended", "math_verify")

# This process's comparison options: the defaults, or what the pool's initializer set.
_OPTIONS = GradeOptions()


def configure(rel_tol: float = 1e-9, precision: int = 30) -> None:
    """Set this process's grading options (called once per verifier worker at start-up)."""
    global _OPTIONS
    _OPTIONS = GradeOptions(rel_tol=rel_tol, precision=precision)
    # warm up before the worker says ready: the first grade imports sympy's and math-verify's parsers
    # (~0.1-0.5 s), which would otherwise count against the first answer's timeout and patience
    verify_answer("\\frac{1}{2}", "0.5")


def options() -> GradeOptions:
    return _OPTIONS


def wrap_gold(gold: str) -> str:
    """``5`` -> ``$5$`` (a matrix too); an answer that already carries delimiters stays as it is.

    Kept for callers that hand a gold answer to math-verify directly; the grader itself
    normalises golds with normalize.py. An escaped dollar (``\\$18.90``) is content.
    """
    g = gold.strip()
    if _UNESCAPED_DOLLAR.search(g) or any(d in g for d in _LATEX_DELIMS):
        return g
    return f"${g}$"


def parse_gold_answer(gold: str, timeout_s: int = 5) -> list:
    """The parsed gold answer as a one-element list (a sympy object, or the case-folded words
    of a text answer such as ``\\text{east}``); [] when it cannot be parsed.

    Used by the dataset to flag unparseable answers at load time; call it from a main
    thread (signal.alarm), or with ``timeout_s=0`` to run without a timeout.
    """
    quiet_math_verify()
    try:
        norm, expr = parse_gold(gold, timeout_s if timeout_s > 0 else None)
    except BaseException as e:  # math-verify's TimeoutException is not an Exception
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return []
    return [norm.text] if norm.text is not None else [expr]


def gold_parses(gold: str, timeout_s: int = 5) -> bool:
    """Whether the grader can compare answers with this gold as mathematics (or as a text
    answer). A gold that does not parse (``}{``, ``t(0,4]``, a sentence) could only ever be
    rewarded by an identical string: the dataset rejects or flags such rows."""
    return bool(parse_gold_answer(gold, timeout_s))


def verify_answer(pred: str, gold: str, timeout_s: int = 5) -> tuple[bool, str]:
    """(equivalent?, reason) for an extracted answer ``pred`` vs the ``gold`` answer."""
    from math_verify.errors import TimeoutException

    try:
        return grade(pred, gold, _OPTIONS, timeout_s=max(1, int(timeout_s)))
    except TimeoutException:
        return False, MV_TIMEOUT
