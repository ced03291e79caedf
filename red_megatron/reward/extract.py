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
# spacing at either end: \  \, \; \: \! \> \quad \qquad ~, or a lone trailing backslash (not a row break \\)
_DIGIT_GAP = re.compile(r"(?<=\d)(?:\s|\\[,;:!> ]|~)+(?=\d)")
_EDGE_SPACE = re.compile(r"^(?:\\(?:quad|qquad|[,;:!> ])|~)+|(?<!\\)(?:\\(?:quad|qquad|[,;:!> ])|~)+$|(?<!\\)\\$")


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


def _outer_boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of each well-formed box that no other box contains, left to right."""
    out = []
    i = 0
    while True:
        hits = [(p, c) for c in _BOX_COMMANDS if (p := text.find(c, i)) != -1]
        if not hits:
            return out
        pos, cmd = min(hits)
        content = _box_at(text, pos, cmd)
        if content is None:  # malformed or unclosed: look past its name, a box may follow inside
            i = pos + len(cmd)
            continue
        j = pos + len(cmd)
        while text[j] == " ":
            j += 1
        end = (_match_braces(text, j) + 1) if text[j] == "{" else j + len(content)
        out.append((pos, end, content))
        i = end


def strip_tex_space(s: str) -> str:
    """``s`` without leading/trailing whitespace or TeX spacing (``\\ ``, ``\\,``, ``\\quad``, ``~``): a model
    that writes ``\\boxed{9/52\\ }`` has answered ``9/52``. A row break ``\\\\`` is content."""
    prev = None
    while prev != s:
        prev = s
        s = _EDGE_SPACE.sub("", s.strip())
    return s


def unbox(s: str) -> str:
    """Each box inside ``s`` replaced by its braced content: the same text wherever it was boxed."""
    boxes = _outer_boxes(s)
    for start, end, content in reversed(boxes):
        s = s[:start] + "{" + unbox(content) + "}" + s[end:]
    return s


def extract_boxed(text: str) -> str | None:
    """The content of the last outermost well-formed ``\\boxed``/``\\fbox`` in ``text``, else None.

    Outermost: ``\\boxed{\\boxed{42} 41}`` answered ``\\boxed{42} 41``, not ``42``; a box that is the
    whole content of another (``\\boxed{\\boxed{42}}``) is opened too. Edge spacing is stripped."""
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed expects a str response, got {type(text).__name__}")
    boxes = _outer_boxes(text)
    if not boxes:
        return None
    best = strip_tex_space(boxes[-1][2])
    while True:  # \boxed{\boxed{42}}: the inner box is the whole answer
        inner = _outer_boxes(best)
        if len(inner) != 1 or inner[0][0] != 0 or inner[0][1] != len(best):
            break
        best = strip_tex_space(inner[0][2])
    return best or None


def normalize_for_exact_match(answer: str) -> str:
    """A light canonical form for the exact-match fast path: no spaces, no unescaped ``$``, no ``\\!``.

    Deliberately conservative: two strings equal here are equal as math, so the fast path
    never awards a wrong answer; everything else goes to math-verify.
    """
    s = _UNESCAPED_DOLLAR.sub("", answer.strip())  # "$69$,$84$" and "69,84" are one answer
    s = _DIGIT_GAP.sub("\u2423", s)  # "3 1/2" is not "31/2", nor "42 41" "4241": the gap stays, marked
    for junk in ("\\!", "\\,", "\\;", "\\ ", " ", "\t", "\n"):
        s = s.replace(junk, "")
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2]
    return s
