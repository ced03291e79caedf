"""math-verify equivalence of one extracted answer against one gold answer.

Runs inside a verifier worker's main thread (see pool.py): math-verify's own timeouts use
``signal.alarm``, which only works there. Its alarms take whole seconds and cover one
expression each, so they are a first line; the pool's kill deadline is the guarantee.

Gold answers are wrapped in ``$...$`` when bare: math-verify's LaTeX extractor finds
nothing in a bare ``5`` (RED_SPEC). The extracted prediction is re-boxed so the extractor
takes it whole rather than hunting for a sub-expression inside it.
"""
from __future__ import annotations

import functools
import logging
import re

# reasons a verifier can give; the scorer counts them
CORRECT = "correct"
WRONG = "wrong"
PARSE_FAIL = "parse_fail"
GOLD_PARSE_FAIL = "gold_parse_fail"
MV_TIMEOUT = "timeout"

_LATEX_DELIMS = ("\\(", "\\[", "\\boxed", "\\begin{")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def wrap_gold(gold: str) -> str:
    """``5`` -> ``$5$``; a gold answer that already carries LaTeX delimiters stays as it is.

    An escaped dollar (``\\$18.90``, a currency sign) is content, not a delimiter.
    """
    g = gold.strip()
    if _UNESCAPED_DOLLAR.search(g) or any(d in g for d in _LATEX_DELIMS):
        return g
    return f"${g}$"


def wrap_pred(pred: str) -> str:
    return f"$\\boxed{{{pred}}}$"


def _quiet_math_verify() -> None:
    # math-verify logs a warning per timeout / failed parse: that is what stats are for
    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout_s: int):
    from math_verify import parse

    return parse(wrap_gold(gold), parsing_timeout=timeout_s, raise_on_error=True)


def parse_gold_answer(gold: str, timeout_s: int = 5) -> list:
    """math-verify's parse of a gold answer (wrapped when bare); [] when it cannot be parsed.

    Also used by the dataset to reject unparseable answers at load time; call it from a
    main thread (signal.alarm), or with ``timeout_s=0`` to run without a timeout.
    """
    from math_verify.errors import TimeoutException

    _quiet_math_verify()
    try:
        return list(_parse_gold(gold, timeout_s if timeout_s > 0 else None))
    except TimeoutException:
        return []
    except Exception:
        return []


def gold_parses(gold: str, timeout_s: int = 5) -> bool:
    """Whether math-verify turns the gold answer into a math object.

    A parse that only yields math-verify's raw-string fallback (``'}{'``, ``'\\frac{'``) means
    the gold is not math-verify can compare, so such a row could only ever be rewarded by an
    identical string: the dataset rejects it.
    """
    return any(not isinstance(x, str) for x in parse_gold_answer(gold, timeout_s))


def verify_answer(pred: str, gold: str, timeout_s: int = 5) -> tuple[bool, str]:
    """(equivalent?, reason) for an extracted answer ``pred`` vs the ``gold`` answer."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    _quiet_math_verify()
    t = max(1, int(timeout_s))
    try:
        gold_parsed = _parse_gold(gold, t)
    except TimeoutException:
        return False, MV_TIMEOUT
    except Exception:
        return False, GOLD_PARSE_FAIL
    if not gold_parsed:
        return False, GOLD_PARSE_FAIL
    try:
        pred_parsed = parse(wrap_pred(pred), parsing_timeout=t, raise_on_error=True)
    except TimeoutException:
        return False, MV_TIMEOUT
    except Exception:
        return False, PARSE_FAIL
    if not pred_parsed:
        return False, PARSE_FAIL
    try:
        ok = bool(verify(gold_parsed, pred_parsed, timeout_seconds=t, raise_on_error=True))
    except TimeoutException:
        return False, MV_TIMEOUT
    except Exception:
        return False, WRONG  # sympy could not compare them: not shown equal
    return ok, CORRECT if ok else WRONG
