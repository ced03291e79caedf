"""Final-answer extraction: the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``).

RED_SPEC scores a sample by its *last* boxed answer, so a chain of thought that boxes an
intermediate result and then corrects itself is judged on the correction. Braces are
matched by depth, not by regex, so ``\\boxed{\\frac{1}{2}}`` yields ``\\frac{1}{2}``.
An unclosed box (a truncated response) yields nothing: the model never committed.
"""
from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _match_braces(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; None when never closed."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2  # an escaped brace, \{ or \}, does not change the depth
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_at(text: str, start: int, cmd: str) -> str | None:
    """Content of the box command starting at ``start``, or None when malformed/unclosed."""
    j = start + len(cmd)
    if j < len(text) and (text[j].isalpha()):
        return None  # e.g. \boxedfoo: another macro, not a box
    while j < len(text) and text[j] == " ":
        j += 1
    if j >= len(text):
        return None
    if text[j] == "{":
        end = _match_braces(text, j)
        return None if end is None else text[j + 1:end]
    if start + len(cmd) < len(text) and text[start + len(cmd)] == " ":
        # "\boxed 5": TeX's one-token argument form, seen in some model outputs
        k = j
        while k < len(text) and not text[k].isspace() and text[k] not in "$.,":
            k += 1
        return text[j:k] or None
    return None


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last well-formed ``\\boxed``/``\\fbox`` in ``text``, else None."""
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed expects a str response, got {type(text).__name__}")
    best_pos = -1
    best: str | None = None
    for cmd in _BOX_COMMANDS:
        pos = text.rfind(cmd)
        # walk backwards past malformed occurrences (e.g. a truncated last box)
        while pos != -1 and pos > best_pos:
            content = _box_at(text, pos, cmd)
            if content is not None:
                best_pos, best = pos, content
                break
            pos = text.rfind(cmd, 0, pos)
    if best is None:
        return None
    best = best.strip()
    return best or None


def normalize_for_exact_match(answer: str) -> str:
    """A light canonical form for the exact-match fast path: no spaces, no unescaped ``$``, no ``\\!``.

    Deliberately conservative: two strings equal here are equal as math, so the fast path
    never awards a wrong answer; everything else goes to math-verify.
    """
    s = _UNESCAPED_DOLLAR.sub("", answer.strip())  # "$69$,$84$" and "69,84" are one answer
    for junk in ("\\!", "\\,", "\\;", "\\ ", " ", "\t", "\n"):
        s = s.replace(junk, "")
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    return s
