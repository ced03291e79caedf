"""Units at the end of an answer: read into one canonical name so two answers can be compared.

The grader's rule (grader.py): when the gold and the prediction both carry a unit, the units
must be the same after :func:`canonical_unit`; a prediction without a unit is judged on its
number alone (``12`` answers ``12 \\text{ cm}``); a different unit is wrong (``12 \\text{ m}``,
``12 \\text{ cm}^3`` for ``12 \\text{ cm}^2``).

The equivalence list, the whole of it:
- spellings of one unit: the names in ``_ALIASES`` (``inches``, ``inch``, ``in``; ``cm``,
  ``centimeter(s)``, ``centimetre(s)``; ``degrees``, ``^\\circ``; ...);
- case and plural: words are case-folded and a plural ``s`` dropped (``Cents`` = ``cent``), so
  a prefix that differs only by case (``Mm``, ``mm``) is not told apart;
- powers: ``square X``/``sq X`` = ``X^2``, ``cubic X`` = ``X^3``, ``^{2}`` = ``^2``.
Anything else is compared as the words written: ``\\text{ apples}`` is not ``\\text{ pears}``.
Unit conversion (``120 \\text{ cm}`` for ``1.2 \\text{ m}``) is not attempted: it scores 0.
"""
from __future__ import annotations

import re

_ALIASES = {
    "mm": ("millimeter", "millimetre"), "cm": ("centimeter", "centimetre"), "m": ("meter", "metre"),
    "km": ("kilometer", "kilometre"), "in": ("inch", "inches"), "ft": ("foot", "feet"), "yd": ("yard",),
    "mi": ("mile",), "s": ("sec", "second"), "min": ("minute",), "h": ("hr", "hour"), "day": (),
    "week": ("wk",), "year": ("yr",), "g": ("gram",), "kg": ("kilogram",), "lb": ("pound",), "oz": ("ounce",),
    "l": ("liter", "litre"), "ml": ("milliliter", "millilitre"), "deg": ("degree", "\\circ", "°"),
    "rad": ("radian",), "cent": ("¢",), "dollar": ("usd",), "unit": (),
}
_CANON = {alias: name for name, aliases in _ALIASES.items() for alias in (name, *aliases)}
_POWER_WORD = {"square": 2, "sq": 2, "cubic": 3, "cu": 3}


def _singular(word: str) -> str:
    if word in _CANON:
        return word
    if len(word) >= 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def canonical_unit(text: str, power: int = 1) -> str:
    """``text`` (the words of ``\\text{...}``) raised to ``power`` as one canonical string:
    ``canonical_unit(" square inches")`` = ``canonical_unit("in", 2)`` = ``"in^2"``."""
    words = [w for w in re.split(r"[\s.]+", text.strip().casefold()) if w]
    while words and words[0] in _POWER_WORD:
        power *= _POWER_WORD[words.pop(0)]
    name = " ".join(_CANON.get(_singular(w), _singular(w)) for w in words)
    return name if power == 1 else f"{name}^{power}"
