"""The grader: is an extracted answer mathematically the gold answer?

math-verify stays the engine (its LaTeX normaliser, latex2sympy2 parser and ``verify``);
this module configures and wraps it where its defaults give full marks to wrong answers:

- answers are normalised first (normalize.py) and parsed whole, never "the last number
  that parses" (math-verify's ``get_last_eq`` fallback read only the ``5/3`` of a matrix
  and the ``2`` of ``\\hbar\\omega(v+1/2)-...``);
- symbols keep their case (``ConversionConfig(lowercase_symbols=False)``), so ``N=n`` is
  an equation between two variables and not ``n=n``;
- decimals are read as the exact rationals they spell (``0.1`` -> ``1/10``) and numbers are
  compared by :func:`numbers_close`: equal, or within a *relative* tolerance ``rel_tol``
  (``GradeOptions``, default 1e-9). math-verify's default rounds floats to 6 decimals,
  which accepts ``0.1730769`` for ``9/52`` and ``0`` for ``3.89e-10``;
- lists and sets must match element for element and in number (``221`` is not ``221, 8``,
  ``16,3,1`` is not ``16,3,1,1``), equations as equations (``N=n+1`` is not ``N=n``), tuples and
  matrices in order and shape, intervals with their open/closed ends;
- pure-text answers (``\\text{(C)}``) compare as case-folded text;
- numbers sympy would hang on (``9^{9^{9^{9}}}``) are refused before parsing (:func:`too_big`).

Everything else (symbolic expressions, equations, unions) goes to ``math_verify.verify``
with ``strict=True`` on these exact parses.
"""
from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass

from red_megatron.reward.extract import normalize_for_exact_match
from red_megatron.reward.normalize import Normalized, normalize_answer, plain_text

CORRECT = "correct"
WRONG = "wrong"
PARSE_FAIL = "parse_fail"
GOLD_PARSE_FAIL = "gold_parse_fail"
MV_TIMEOUT = "timeout"


@dataclass(frozen=True, kw_only=True)
class GradeOptions:
    """How two answers are compared (documented in RewardConfig, which sets them).

    rel_tol: two numbers are equal when ``|a - b| <= rel_tol * max(|a|, |b|)`` (or exactly
        equal). 1e-9 by default: a rounded decimal (``0.1730769`` for ``9/52``) is wrong,
        while ``3.14159265359`` for ``\\pi`` (11 digits) is right. 0 asks for exact equality
        at ``precision`` digits. An integer against a rational (a decimal is read as the
        rational it spells) is always exact: ``5.0000000001`` is not ``5``.
    precision: decimal digits numbers are evaluated to before comparing.
    """
    rel_tol: float = 1e-9
    precision: int = 30

    def __post_init__(self):
        if not isinstance(self.rel_tol, (int, float)) or not 0 <= self.rel_tol < 1:
            raise ValueError(f"rel_tol must be a number in [0, 1), got {self.rel_tol!r}")
        if not isinstance(self.precision, int) or not 15 <= self.precision <= 100:
            raise ValueError(f"precision must be an int in [15, 100], got {self.precision!r}")


def quiet_math_verify() -> None:
    # math-verify logs a warning per timeout / failed parse: that is what stats are for
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)


@functools.lru_cache(maxsize=1)
def _configs():
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    return (NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True,
                                boxed="all", equations=False),
            ConversionConfig(interpret_as_mixed_fractions=True, interpret_simple_eq_as_assignment=False,
                             interpret_contains_as_eq=True, lowercase_symbols=False))


def _exact_decimals(expr):
    """Every Float in ``expr`` replaced by the rational its digits spell (``0.1`` -> 1/10)."""
    import sympy

    try:
        floats = expr.atoms(sympy.Float)
    except Exception:
        return expr
    if not floats:
        return expr
    return expr.xreplace({f: sympy.Rational(str(f)) for f in floats})


def _parse_latex(latex: str):
    from latex2sympy2_extended.latex2sympy2 import latex2sympy
    from latex2sympy2_extended.math_normalization import normalize_latex
    from math_verify.grader import should_treat_as_complex

    norm_cfg, conv_cfg = _configs()
    text = normalize_latex(latex, config=norm_cfg)
    expr = latex2sympy(text, is_real=not should_treat_as_complex(text), convert_degrees=False,
                       normalization_config=None, conversion_config=conv_cfg)
    return _exact_decimals(expr)


_JUXTAPOSED = re.compile(r"\d\s+\.?\d")
_TOWER = re.compile(r"\d+(?:\s*\^\s*\{?\s*\(?\s*\d+)+")
_FACT_OF_FACT = re.compile(r"!\s*[)}]\s*!")
MAX_DIGITS = 100_000  # an integer with more digits than this is not an answer; sympy may hang building it


def too_big(latex: str) -> bool:
    """Whether ``latex`` spells a number sympy would hang on: a tower of integer powers with
    more than MAX_DIGITS digits (``9^{9^{9^{9}}}``), a factorial of a factorial (``(9!)!!``).
    Checked before parsing, so such an answer is refused at once (reason ``timeout``) instead
    of eating a worker until the pool kills it (``2^{1009}`` and ``10^{100}`` are fine)."""
    if _FACT_OF_FACT.search(latex):
        return True
    for m in _TOWER.finditer(latex):
        nums = [int(x) for x in re.findall(r"\d+", m.group(0))]
        value = float(nums[-1])
        for base in reversed(nums[:-1]):
            if base <= 1:
                value = float(base)
                continue
            digits = value * math.log10(base)
            if digits > MAX_DIGITS:
                return True
            value = float(base) ** value if digits < 300 else math.inf
    return False


def parse_normalized(n: Normalized, timeout_s: int | None):
    """The sympy object for a normalised answer; raises on a parse error or timeout."""
    from math_verify.utils import timeout

    if not n.latex:
        raise ValueError("empty answer")
    if _JUXTAPOSED.search(n.latex):  # "42 41": the parser would add them; no reading of it is safe
        raise ValueError(f"two numbers side by side in {n.latex!r:.60}")
    if too_big(n.latex):  # counted as a timeout: it is one, told in advance
        from math_verify.errors import TimeoutException

        raise TimeoutException(f"answer too large to evaluate (over {MAX_DIGITS} digits)")
    expr = timeout(timeout_seconds=timeout_s)(_parse_latex)(n.latex)
    if "infty" not in n.latex and _undefined(expr):  # a misread (\Gamma(-1)): it would equal any other misread
        raise ValueError(f"{n.latex!r:.60} reads as an undefined value")
    return expr


def _undefined(expr) -> bool:
    import sympy

    try:
        return bool(expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo))
    except Exception:
        return False


@functools.lru_cache(maxsize=4096)
def _parse_gold_cached(gold: str, timeout_s: int | None):
    n = normalize_answer(gold)  # a timeout propagates and is not cached; a parse error is
    if n.text is not None:
        return n, None, None
    try:
        return n, parse_normalized(n, timeout_s), None
    except Exception as e:
        return n, None, f"{type(e).__name__}: {str(e)[:200]}"


def parse_gold(gold: str, timeout_s: int | None = 5):
    """(Normalized, sympy object or None for a text answer) of a gold answer; raises
    ValueError when it cannot be parsed (the dataset's load-time check reports such rows)."""
    quiet_math_verify()
    n, expr, err = _parse_gold_cached(gold, timeout_s if timeout_s and timeout_s > 0 else None)
    if err is not None:
        raise ValueError(f"gold answer {gold!r:.80} does not parse: {err}")
    return n, expr


# --- comparison -----------------------------------------------------------------------------

_COMMAND = re.compile(r"\\[A-Za-z]+")
_CONSTANTS = frozenset("ei")  # e and i read as numbers (e^{i\pi}+1 is 0), not as symbols


def _zero_swallowed_symbols(latex: str, expr) -> bool:
    """Whether a zero factor swallowed the answer's symbols: sympy builds ``r e s u l t 0`` as the number 0,
    which made a box of words ending in 0 (the demo's step-19 sample, 2026-12-06) equal a gold ``0``."""
    try:
        if getattr(expr, "is_zero", None) is not True:
            return False
    except Exception:
        return False
    return bool(set(re.findall(r"[A-Za-z]", _COMMAND.sub(" ", latex))) - _CONSTANTS)


def _is_number(x) -> bool:
    import sympy

    return isinstance(x, sympy.Expr) and not x.free_symbols and not isinstance(x, sympy.MatrixBase)


def numbers_close(a, b, opts: GradeOptions) -> bool | None:
    """Two symbol-free expressions: equal or within ``rel_tol``; None when not comparable."""
    import sympy

    try:
        if a == b:
            return True
        if (isinstance(a, sympy.Integer) and isinstance(b, sympy.Rational)) or \
                (isinstance(b, sympy.Integer) and isinstance(a, sympy.Rational)):
            # integers are exact: 11111111101 is not 11111111100, nor is 5.0000000001 (a decimal, read
            # as the rational it spells) 5; the relative tolerance is for irrationals and rounded golds
            return False
        av, bv = a.evalf(opts.precision), b.evalf(opts.precision)
        if not (av.is_number and bv.is_number) or av.has(sympy.nan, sympy.zoo) or bv.has(sympy.nan, sympy.zoo):
            return None
        if av.is_infinite or bv.is_infinite:
            return bool(av == bv)
        ar, ai = av.as_real_imag()
        br, bi = bv.as_real_imag()
        diff = sympy.sqrt((ar - br) ** 2 + (ai - bi) ** 2)
        scale = sympy.Max(sympy.sqrt(ar ** 2 + ai ** 2), sympy.sqrt(br ** 2 + bi ** 2))
        if diff == 0:
            return True
        return bool(diff <= opts.rel_tol * scale)
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return None


def _match_sets(g_elems, p_elems, opts, timeout_s) -> bool:
    if len(g_elems) != len(p_elems):
        return False
    left = list(p_elems)
    for g in g_elems:  # each gold element takes one prediction element (sets here are small)
        hit = next((k for k, p in enumerate(left) if equal(g, p, opts, timeout_s)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def _is_assignment(x) -> bool:
    import sympy

    return isinstance(x, sympy.Eq) and isinstance(x.lhs, (sympy.Symbol, sympy.Function, sympy.Indexed))


def _is_differential(x) -> bool:
    import sympy

    return isinstance(x, sympy.Eq) and any(s.name.startswith(_DERIV_NAME) for s in x.free_symbols
                                           if isinstance(s, sympy.Symbol))


def _same_equation(g, p, opts: GradeOptions, timeout_s) -> bool:
    """Two equations are the same when their sides match, or ``lhs - rhs`` of one is a nonzero
    constant times the other's (math-verify's own equation comparison accepts ``M^7`` for
    ``M^6`` in ``dM/dt = k M^6``)."""
    import sympy

    if g.lhs == p.lhs and equal(g.rhs, p.rhs, opts, timeout_s):
        return True
    dg, dp = g.lhs - g.rhs, p.lhs - p.rhs
    if dp == 0 or dg == 0:
        return dg == dp
    ratio = sympy.simplify(dg / dp)
    return bool(ratio.is_number and ratio != 0 and ratio.is_finite)


def equal(g, p, opts: GradeOptions, timeout_s: int | None = 5) -> bool:
    """Gold object ``g`` vs predicted object ``p`` (both from :func:`parse_normalized`)."""
    import sympy
    from math_verify import verify

    if _is_number(g) and _is_number(p):
        close = numbers_close(g, p, opts)
        if close is not None:
            return close
    if isinstance(g, sympy.MatrixBase) or isinstance(p, sympy.MatrixBase):
        if not (isinstance(g, sympy.MatrixBase) and isinstance(p, sympy.MatrixBase)) or g.shape != p.shape:
            return False
        return all(equal(a, b, opts, timeout_s) for a, b in zip(g, p))
    if isinstance(g, sympy.FiniteSet) and len(g) > 1:
        if not isinstance(p, (sympy.FiniteSet, sympy.Tuple)):
            return False  # one element of a list is not the list
        return _match_sets(list(g.args), list(p.args), opts, timeout_s)
    if isinstance(g, sympy.Tuple) and isinstance(p, sympy.Tuple):
        return len(g) == len(p) and all(equal(a, b, opts, timeout_s) for a, b in zip(g, p))
    if isinstance(g, sympy.Interval) and isinstance(p, sympy.Interval):
        return (g.left_open == p.left_open and g.right_open == p.right_open
                and equal(g.start, p.start, opts, timeout_s) and equal(g.end, p.end, opts, timeout_s))
    if _is_differential(g) and not isinstance(p, sympy.core.relational.Relational):
        return False  # dM/dt = ... is a differential equation, not a value: its right side alone is not it
    if _is_assignment(g):
        if _is_assignment(p):
            return g.lhs == p.lhs and equal(g.rhs, p.rhs, opts, timeout_s)
        if not isinstance(p, sympy.core.relational.Relational):
            return equal(g.rhs, p, opts, timeout_s)  # "x = 5" answered "5"
    if isinstance(g, sympy.Eq) and isinstance(p, sympy.Eq):
        return _same_equation(g, p, opts, timeout_s)
    if _is_number(g) and isinstance(p, (sympy.Set, sympy.Tuple)) and not isinstance(p, sympy.Interval):
        return False
    return bool(verify(g, p, float_rounding=opts.precision, numeric_precision=opts.precision, strict=True,
                       allow_set_relation_comp=False, timeout_seconds=timeout_s, raise_on_error=True))


def top_level_items(latex: str) -> int:
    """How many comma-separated items ``latex`` lists outside any bracket; an outer set
    brace ``\\{...\\}`` is looked inside, and an item with ``\\pm`` counts as two."""
    s = latex.strip()
    for lo, hi in (("\\left\\{", "\\right\\}"), ("\\{", "\\}")):
        if s.startswith(lo) and s.endswith(hi):
            s = s[len(lo):-len(hi)]
            break
    depth, parts, cur = 0, [], ""
    for c in s.replace("\\{", "(").replace("\\}", ")"):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts, cur = parts + [cur], ""
        else:
            cur += c
    return sum(2 if "\\pm" in x or "\\mp" in x else 1 for x in parts + [cur])  # 1\pm\sqrt{5}: two


def wrapper(latex: str) -> str:
    """How the whole answer is bracketed: ``set`` (``\\{1,2\\}``), ``paren`` (``(1,2)``, ``[1,2)``,
    ``\\left(...\\right)``, one pair of brackets around everything) or ``bare`` (``1, 2``, ``(1,2),(3,4)``)."""
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])", "", latex).strip()
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set"
    if not (s[:1] in "([" and s[-1:] in ")]") or not s:
        return "bare"
    depth = 0
    for i, c in enumerate(s.replace("\\{", "((").replace("\\}", "))")):
        depth += c in "([{"
        depth -= c in ")]}"
        if depth == 0 and i < len(s) - 1:
            return "bare"  # (1,2),(3,4): the first bracket closes before the end
    return "paren"


def _inner_items(latex: str) -> int:
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", latex).strip()
    return top_level_items(s[1:-1]) if wrapper(latex) == "paren" else top_level_items(s)


def _brackets_differ(gn: Normalized, pn: Normalized) -> bool:
    """A tuple or interval (``(3,4)``) is not answered by a set (``\\{3,4\\}``) or a bare list
    (``3, 4``: unordered here), nor a set (``\\{1,2,3\\}``) by a tuple ``(1,2,3)``."""
    g, p = wrapper(gn.latex), wrapper(pn.latex)
    if g == "paren" and _inner_items(gn.latex) > 1:
        return p != "paren"
    if g == "set" and _inner_items(gn.latex) > 1:
        return p == "paren"
    return False


_DERIV_NAME = "Derivative["


def _opaque_derivatives(g, p):
    """``g`` and ``p`` with each derivative replaced by one symbol per derivative: sympy evaluates
    ``d y/d x`` of a plain symbol to 0, which made ``dy/dx = 5x^2`` the same equation as ``= 3x^2``."""
    import sympy

    atoms = set()
    for x in (g, p):
        try:
            atoms |= x.atoms(sympy.Derivative)
        except Exception:
            pass
    if not atoms:
        return g, p
    sub = {d: sympy.Symbol(f"{_DERIV_NAME}{sympy.srepr(d)}]") for d in atoms}
    return g.xreplace(sub), p.xreplace(sub)


def _percent_pairs(gn: Normalized, g, pn: Normalized, p):
    """``62.5%`` is answered by ``62.5%``, ``62.5`` or ``0.625``; ``0.625%`` is not ``62.5%``."""
    import sympy

    pairs = [(g, p)]
    if gn.percent and not pn.percent and isinstance(g, sympy.Expr):
        pairs.append((g / 100, p))
    elif pn.percent and not gn.percent and isinstance(p, sympy.Expr):
        pairs.append((g, p / 100))
    return pairs


def grade(pred: str, gold: str, opts: GradeOptions = GradeOptions(), timeout_s: int | None = 5) -> tuple[bool, str]:
    """(equivalent?, reason) for an extracted answer ``pred`` against the ``gold`` answer.

    Raises math-verify's TimeoutException when a parse or comparison runs past ``timeout_s``
    (signal.alarm: main thread only; None runs without).
    """
    from math_verify.errors import TimeoutException

    quiet_math_verify()
    if normalize_for_exact_match(pred) == normalize_for_exact_match(gold):
        return True, CORRECT
    try:
        gn, g = parse_gold(gold, timeout_s)
    except TimeoutException:
        raise
    except Exception:
        return False, GOLD_PARSE_FAIL
    if gn.text is not None:
        return (True, CORRECT) if plain_text(pred) == gn.text else (False, WRONG)
    pn = normalize_answer(pred)
    if (gn.unit and pn.unit and gn.unit != pn.unit) or (gn.bases and pn.bases and gn.bases != pn.bases):
        return False, WRONG  # 12 m for 12 cm, 52_9 for 52_8; no unit (base) at all is judged on the number
    if _brackets_differ(gn, pn):
        return False, WRONG
    if pn.latex.replace(" ", "") == gn.latex.replace(" ", "") and pn.percent == gn.percent:
        return True, CORRECT
    try:
        p = parse_normalized(pn, timeout_s)
    except TimeoutException:
        raise
    except Exception:
        return False, PARSE_FAIL
    if _zero_swallowed_symbols(pn.latex, p):
        return False, WRONG
    g, p = _opaque_derivatives(g, p)
    n_gold, n_pred = top_level_items(gn.latex), top_level_items(pn.latex)
    if n_gold > 1 and n_pred != n_gold:
        return False, WRONG  # "16,3,1" for "16,3,1,1", "-2" for "-2,-2": a set would drop the repeats
    for a, b in _percent_pairs(gn, g, pn, p):
        try:
            if equal(a, b, opts, timeout_s):
                return True, CORRECT
        except TimeoutException:
            raise
        except Exception:
            continue  # sympy could not compare them: not shown equal
    return False, WRONG
