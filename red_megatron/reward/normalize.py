"""String normalisation of answers before math-verify's LaTeX parser sees them.

The same function serves gold answers and extracted predictions, so both sides of a
comparison go through one code path. Every rule here comes from an answer form in the six
evaluation benchmarks (``../shared/data/math_eval.parquet``) that math-verify alone
mis-reads:

- ``$...$`` delimiters anywhere, also several (olympiad ``$69$,$84$``, ``$221,$8$``) and
  stray ones (minerva ``x_{0} \\cos (\\omega t)+$ $\\dot{x}_{0} ...``): removed, so a
  multi-answer gold is one list and not "the first/last dollar group";
- decimals with a trailing dot (minerva ``-1./3``): ``-1/3``;
- scientific notation (``4.5e33``, ``3.89e-10``): ``4.5\\times 10^{33}`` (math-verify reads
  ``e`` as Euler's number);
- numpy spellings (``np.arcsin(10/13)``): ``\\arcsin(10/13)``;
- percentages (``62.5%``, ``8 \\%``): the number, with a flag (see grader.py for the rule);
- a trailing unit (``5.4 \\text{ cents}``, ``15\\mbox{ cm}^2``): removed here, because
  latex2sympy2's own unit rule deletes everything after the first ``\\text{`` of
  ``\\frac{1}{3} \\text{E}_{1}+\\frac{2}{3} \\text{E}_{2}``;
- ``dx/dt`` as the derivative ``\\frac{dx}{dt}`` (what latex2sympy2 makes of the latter);
- currency ``\\$``, TeX spacing (``\\!``, ``\\quad``), ``\\geqslant``, a final full stop.

- a unit is removed from the text but kept in ``Normalized.unit`` (units.py), a base subscript
  (``52_8``) in ``Normalized.bases``: the grader compares them when both answers have one;
- a mixed number ``3 1/2`` (``3\\ 1/2``): ``(3+1/2)`` (the parser reads ``(3+1)/2``);
- digit groups split by TeX spacing (``10\\,080``, ``1 000``): one number (the parser adds them);
- ``\\gamma``/``\\Gamma`` not called on parentheses: a symbol (``{\\gamma}^2-1``), not Gamma(-1);
- a prime (``y'``, ``f'(x)``, ``\\theta''``): ``y^{\\prime}``, so ``y'`` is not ``y``;
- boxes inside the answer (``\\boxed{42} 41``): their content; spacing at either end: nothing.

Pure-text answers (``\\text{Evelyn}``, ``\\text{(C)}``) are compared as case-folded text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from red_megatron.reward.extract import strip_tex_space, unbox
from red_megatron.reward.units import canonical_unit

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_SPACING = re.compile(r"(?<!\\)\\(?:quad|qquad|[,;:>]|\s)")  # \quad, \qquad, \, \; \: \> and "\ ", not "\\"
_THIN_NEG = re.compile(r"(?<!\\)\\!\s*")  # \! (10,\!080): a negative thin space, nothing
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")  # the whole answer "58,500" is a number
_LIST_COMMA = re.compile(r",(?=\S)")
_SUB_WORD = re.compile(r"_\{\s*\\(?:(max|min|odot|sun|star)|(?:text|mathrm)\s*\{\s*(\w+)\s*\})\s*\}")
_UNIT_END = re.compile(r"(?<=[\d})\s])\s*\\(?:text|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z .]*)\}(?:\^\{?(\d)\}?)?\s*$")
_DEGREES_END = re.compile(r"(?<=[\d}])\s*(?:\^\s*\{?\s*\\circ\s*\}?|°)\s*$")
_GAP = r"(?:\s|\\[,;: ]|~)+"  # what separates "3 1/2" or "10\,080": a space, TeX spacing, a tie
_MIXED = re.compile(r"(?<![\w.^\\])(\d+)" + _GAP + r"(\d+)\s*/\s*(\d+)(?![\w.])")
_SPACED_THOUSANDS = re.compile(r"(?<![\w.^\\])\d{1,3}(?:" + _GAP + r"\d{3})+(?![\d.])(?!\s*/)")
_BASE_SUB = re.compile(r"(?<![\w.\\])(\d+)_(?:\{\s*(\d+)\s*\}|(\d))")
_GAMMA = re.compile(r"(?<!\{)(\\(?:gamma|Gamma))(?![A-Za-z])(?=\s*[\^+-])")  # a power or a term, not a call: \Gamma(5)
_PRIME = re.compile(r"(\\[A-Za-z]+|(?<![A-Za-z\\])[A-Za-z])('+)")
_DERIV = re.compile(r"(?<![A-Za-z\\])\(?\s*d\s*(\\[A-Za-z]+|[A-Za-z])\s*\)?\s*/\s*\(?\s*d\s*([A-Za-z])\s*\)?(?![A-Za-z])")
_E_SUB = re.compile(r"(?<![\\A-Za-z])E_")  # E_{1}: a named quantity, not Euler's number
_TRAILING_DOT_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(?![\d.])")  # "-1./3" -> "-1/3"; not "1.5", not "..."
_SCI = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([+-]?\d+)(?![\w.{^])")
_NUMPY = re.compile(r"\bnp\.([a-z]+)")
_PERCENT_END = re.compile(r"\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\percent)\s*$")
_TEXT_ONLY = re.compile(r"^\\(?:text|textbf|textit|mathrm|mbox|mathbf)\s*\{([^{}$]*)\}$")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_REPLACEMENTS = (
    ("\\geqslant", "\\geq"), ("\\leqslant", "\\leq"), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"),
    ("\\displaystyle", ""), ("{,}", ","), ("\\$", ""), ("\\mho", "\\Omega"),
)


@dataclass(frozen=True)
class Normalized:
    """``latex``: what the parser gets; ``percent``: the answer ended in a percent sign;
    ``text``: for a pure-text answer (``\\text{east}``), its case-folded words, else None;
    ``unit``: the canonical unit the answer ended in (units.py); ``bases``: its base subscripts."""
    latex: str
    percent: bool = False
    text: str | None = None
    unit: str | None = None
    bases: tuple[str, ...] = ()


def strip_dollars(s: str) -> str:
    """Every unescaped ``$`` removed, plus outer ``\\(...\\)``/``\\[...\\]`` delimiters."""
    s = strip_tex_space(_UNESCAPED_DOLLAR.sub(" ", s))
    for lo, hi in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(lo) and s.endswith(hi):
            s = strip_tex_space(s[len(lo):-len(hi)])
    return s


def plain_text(s: str) -> str:
    """A text answer as comparable words: ``\\text{(C)}`` -> ``c``, ``\\textbf{ East }`` -> ``east``."""
    s = strip_dollars(s)
    s = _TEXT_CMD.sub(r"\1", s)
    s = re.sub(r"[\s{}()~]", "", s).rstrip(".").casefold()
    return s


def _is_text_answer(s: str) -> bool:
    m = _TEXT_ONLY.match(s)
    if m is None:
        return False
    words = m.group(1).strip().strip("()")
    return bool(words) and any(c.isalpha() for c in words) and not any(c.isdigit() for c in words)


def normalize_answer(answer: str) -> Normalized:
    """The parser-ready form of a gold answer or an extracted prediction (see the module doc)."""
    if not isinstance(answer, str):
        raise TypeError(f"normalize_answer expects a str, got {type(answer).__name__}")
    s = strip_dollars(unbox(answer))
    s = _THIN_NEG.sub("", s)
    s = _MIXED.sub(_mixed, s)
    s = _SPACED_THOUSANDS.sub(lambda m: re.sub(_GAP, "", m.group(0)), s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = s.rstrip(" .").strip()  # "$(-\infty, 0) \cup\{1\}$." -> the set
    s = s.rstrip(",").strip()   # "$221,$8$" became "221, 8"; a trailing comma is never content
    if _is_text_answer(s):
        return Normalized(latex=s, text=plain_text(s))
    for old, new in _REPLACEMENTS:
        s = s.replace(old, new)
    s = _NUMPY.sub(r"\\\1", s)
    unit = None
    m = _UNIT_END.search(s)
    if m is not None and s[:m.start()].strip() and not re.fullmatch(r"[A-Z]", m.group(1).strip()):
        # "5.4 \text{ cents}", "15\mbox{ cm}^2": the unit is not parsed, it is compared on its own
        s, unit = s[:m.start()].rstrip(), canonical_unit(m.group(1), int(m.group(2) or 1))
    elif (m := _DEGREES_END.search(s)) is not None and s[:m.start()].strip() and "," not in s:  # one angle
        s, unit = s[:m.start()].rstrip(), canonical_unit("deg")
    bases = tuple(m.group(2) or m.group(3) for m in _BASE_SUB.finditer(s))
    s = _BASE_SUB.sub(r"\1", s)  # 52_8: the numeral, its base kept in ``bases``
    s = _GAMMA.sub(r"{\1}", s)  # \gamma^{2}-1 (a Lorentz factor): the parser calls Gamma on "-1"
    s = _PRIME.sub(lambda m: m.group(1) + "^{" + "\\prime" * len(m.group(2)) + "}", s)
    s = _SUB_WORD.sub(lambda m: "_{" + (m.group(1) or m.group(2)) + "}", s)  # m_{\max }, L_{\odot}
    s = _DERIV.sub(r"\\frac{d \1}{d \2}", s)  # dx/dt, (d x)/(d t): the derivative, as \frac{dx}{dt} reads
    s = _E_SUB.sub(r"\\mathrm{E}_", s)
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    else:  # "2,100" in a list is two numbers: the parser would read a thousands separator
        s = _LIST_COMMA.sub(", ", s)
    s = _SCI.sub(lambda m: f"{m.group(1).rstrip('.')}\\times 10^{{{m.group(2)}}}", s)
    s = _TRAILING_DOT_DECIMAL.sub(r"\1", s)
    percent = False
    m = _PERCENT_END.search(s)
    if m is not None and m.start() > 0:
        s, percent = s[:m.start()].strip(), True
    return Normalized(latex=s.strip(), percent=percent, unit=unit, bases=bases)


def _mixed(m: re.Match) -> str:
    whole, num, den = m.group(1), int(m.group(2)), int(m.group(3))
    if not 0 < num < den:
        return m.group(0)  # "3 4/2" is not a mixed number: left for the parser to refuse
    return f"({whole}+{num}/{den})"
