"""Gold self-check: every gold answer must be graded correct when a model writes it back.

``gold_variants(gold)`` are the forms a model writes a correct answer in (verbatim, ``$``
stripped, spaces removed, ``\\frac{a}{b}`` as ``a/b``, ``bmatrix`` for ``pmatrix``);
``self_check(golds, grade_fn)`` grades each against its gold and returns the failures.
The test suite and ``benchmarks/grader_report.py`` run it over every distinct gold in
``math_eval.parquet``.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

from red_megatron.reward.normalize import strip_dollars

_SIMPLE = re.compile(r"^-?[\w.]+$")


def _brace_arg(s: str, i: int) -> tuple[str, int] | None:
    """The ``{...}`` group (or single token) starting at ``s[i]``: (content, index after)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return None
    if s[i] != "{":
        if s[i] == "\\":
            m = re.match(r"\\[A-Za-z]+", s[i:])
            return (m.group(0), i + len(m.group(0))) if m else None
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
    return None


def frac_to_slash(s: str) -> str:
    """``\\frac{a}{b}`` -> ``a/b`` (``(a)/(b)`` unless both are single tokens; the quotient in
    parentheses when a factor touches it, as a model writes ``(1/4) n``)."""
    for cmd in ("\\dfrac", "\\tfrac", "\\frac"):
        while True:
            k = s.find(cmd)
            if k < 0:
                break
            num = _brace_arg(s, k + len(cmd))
            den = _brace_arg(s, num[1]) if num else None
            if num is None or den is None:
                break
            if re.search(r"\d\s*$", s[:k]):
                return s  # a mixed number (1\frac{4}{5}) has no slash form
            a, b = frac_to_slash(num[0]), frac_to_slash(den[0])
            a = a if _SIMPLE.match(a) else f"({a})"
            b = b if _SIMPLE.match(b) else f"({b})"
            q = f"{a}/{b}"
            before, after = s[:k].rstrip(), s[den[1]:].lstrip()
            alone = (not before or before[-1] in "(,=+-{[") and (not after or after[0] in "),=+-}]")
            s = s[:k] + (q if alone else f"({q})") + s[den[1]:]
    return s


def gold_variants(gold: str) -> dict[str, str]:
    """Correct answers a model writes for ``gold``, by name (duplicates kept: each is a check)."""
    bare = strip_dollars(gold)
    out = {"verbatim": gold, "dollars_stripped": bare, "no_spaces": re.sub(r"\s+", "", bare)}
    if "frac" in bare:
        out["slash"] = frac_to_slash(bare)
    if "pmatrix" in bare:
        out["bmatrix"] = bare.replace("pmatrix", "bmatrix")
    return out


def self_check(golds: Iterable[str], grade_fn: Callable[[str, str], bool]) -> list[tuple[str, str, str]]:
    """(gold, variant name, variant) for every variant ``grade_fn(variant, gold)`` rejects."""
    bad = []
    for g in golds:
        for name, v in gold_variants(g).items():
            if not grade_fn(v, g):
                bad.append((g, name, v))
    return bad


_LAST_INT = re.compile(r"(\d+)(?!.*\d)", re.S)


def _top_level_commas(s: str) -> list[int]:
    depth, out = 0, []
    for i, c in enumerate(s):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0 and not re.match(r",\\!|,\d{3}(?!\d)", s[i:]):
            out.append(i)
    return out


def near_misses(gold: str) -> dict[str, str]:
    """Wrong answers for ``gold``, wrong by construction (string edits, not the grader's say):
    the last integer off by one, a sign flip, the last entry of a matrix/list/tuple alone, a
    list short of its last element, an equation's right side plus one, a fraction rounded
    to 7 significant digits. Empty where no rule applies."""
    bare = strip_dollars(gold).strip().rstrip(".")
    out: dict[str, str] = {}
    m = _LAST_INT.search(bare)
    if m and not re.search(r"(_\s*\{?|\}\s*\^\s*\{?)\s*$", bare[:m.start()]):  # not a subscript, not a unit's power
        out["last_int_plus_1"] = bare[:m.start()] + str(int(m.group(1)) + 1) + bare[m.end():]
    if "=" not in bare and "," not in bare and "\\pm" not in bare and re.search(r"[1-9]", bare):
        out["sign_flip"] = bare[1:] if bare.startswith("-") and "," not in bare else f"-({bare})"
    commas = _top_level_commas(bare)
    if "matrix" in bare:
        entries = re.split(r"\\\\|&", bare.split("}", 1)[1].rsplit("\\end", 1)[0])
        out["last_entry"] = entries[-1].strip()
    elif commas:
        inner = bare
        out["last_element"] = inner[commas[-1] + 1:].strip()
        out["drop_last"] = inner[:commas[-1]].strip()
    elif bare.startswith("(") and bare.endswith(")") and "," in bare:
        out["last_element"] = bare[1:-1].rsplit(",", 1)[1].strip()
    if bare.count("=") == 1 and "," not in bare:
        out["rhs_plus_1"] = bare + " + 1"
    if re.fullmatch(r"-?\d+\./\d+", bare):  # minerva's "-1./3": its numerator alone
        out["numerator_only"] = bare.split(".")[0]
    t = re.fullmatch(r"\\text\{\(([A-E])\)\}", bare)
    if t:
        out["other_option"] = f"\\text{{({'ABCDE'[('ABCDE'.index(t.group(1)) + 1) % 5]})}}"
    f = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", bare)
    den = int(f.group(3)) if f else 1
    while f and den % 2 == 0:
        den //= 2
    while f and den % 5 == 0:
        den //= 5
    if f and den > 1:  # a non-terminating decimal: its 7-digit rounding is wrong
        v = int(f.group(2)) / int(f.group(3))
        r = f"{f.group(1)}{float(f'{v:.7g}')!r}"
        if len(r.split(".")[-1]) >= 6:  # a non-terminating decimal cut short, not its exact value
            out["rounded"] = r
    return out


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def number_perturbations(gold: str) -> list[str]:
    """The gold once per number in it, with that number's last digit changed (``+1`` mod 10):
    each is wrong by construction unless the number does not count (``0^{2}`` -> ``0^{3}``),
    which the report lists. A number is a run of digits, with its decimals (``142.0``)."""
    out = []
    for m in _NUMBER.finditer(gold):
        tok = m.group(0)
        changed = tok[:-1] + str((int(tok[-1]) + 1) % 10)
        out.append(gold[:m.start()] + changed + gold[m.end():])
    return out
