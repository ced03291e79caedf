"""The configuration reference, generated from the config dataclasses (``red-train --help-config``).

Every field of ``RunConfig`` and its sections, with the dotted name an override uses, its type, its
dataclass default and the comment written beside (or just above) the field in the source. The
Markdown is also checked in as docs/CONFIG.md (tests/test_docs.py keeps the two equal).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^#]*?(?:#\s*(?P<c>.*))?$")
_COMMENT = re.compile(r"^\s+#\s?(?P<c>.*)$")

HEADER = """# Configuration reference

Generated from the config dataclasses by `red-train --help-config` (do not edit by hand:
`red-train --help-config > docs/CONFIG.md`; `tests/test_docs.py` checks it is up to date).

A recipe (`configs/`, `--recipe NAME`) sets the whole config; any field below is overridden on the
command line as `section.field=value` (e.g. `policy.tp=2 data.max_response_tokens=4096`); order never
matters, an unknown field is refused with the valid names. The defaults here are the dataclasses';
a recipe changes many of them (`red-train --recipe NAME --check` prints the resolved layout).
"""


_DOC_ENTRY = re.compile(r"^(?P<ind>\s*)(?:- )?(?:``(?P<a>\w+)``[^:]*|(?P<b>\w+)):\s+(?P<c>.*)$")


def _docstring_entries(cls, names: set[str]) -> dict[str, str]:
    """{field: text} from the class docstring's ``name: text`` / ``- ``name``: text`` entries (a field
    documented there rather than beside itself); an entry runs on over its more indented lines."""
    out, current, indent = {}, None, 0
    for line in (inspect.getdoc(cls) or "").splitlines():
        m = _DOC_ENTRY.match(line)
        name = m and (m.group("a") or m.group("b"))
        if name in names:
            current, indent = name, len(m.group("ind"))
            out[name] = m.group("c").strip()
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def _comments(cls) -> dict[str, str]:
    """{field: its comment}: the trailing ``# ...`` on its line, else the ``#`` lines just above it, else
    its entry in the class docstring."""
    try:
        src = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    names = {f.name for f in dataclasses.fields(cls)}
    for line in src:
        m = _COMMENT.match(line)
        if m:
            above.append(m.group("c").strip())
            continue
        m = _FIELD.match(line)
        if m and m.group(1) in names and m.group(1) not in out:
            out[m.group(1)] = (m.group("c") or " ".join(above)).strip()
        above = []
    for name, text in _docstring_entries(cls, names).items():
        if not out.get(name):
            out[name] = text
    return out


def undocumented_fields() -> list[str]:
    """The dotted names of the RunConfig fields the reference gives no meaning for."""
    from red_megatron.config import RunConfig

    missing, todo = [], [(RunConfig, "")]
    while todo:
        cls, prefix = todo.pop(0)
        notes = _comments(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if dataclasses.is_dataclass(hints.get(f.name)):
                todo.append((hints[f.name], f"{prefix}{f.name}."))
            elif not notes.get(f.name):
                missing.append(prefix + f.name)
    return missing


def _type_name(tp) -> str:
    s = tp if isinstance(tp, str) else getattr(tp, "__name__", None) if typing.get_origin(tp) is None else None
    s = s or str(tp)
    return s.replace("typing.", "").replace("NoneType", "None")


def _default(f) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
        return "(section)" if dataclasses.is_dataclass(v) else f"`{v!r}`"
    return "**required**"


def _section(cls, prefix: str, lines: list[str], nested: list) -> None:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    title = prefix.rstrip(".") or "(top level)"
    lines += ["", f"## `{title}` ({cls.__name__})", ""]
    if doc and not doc.startswith(cls.__name__ + "("):
        lines += [doc, ""]
    lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(tp):
            nested.append((tp, f"{prefix}{f.name}."))
            lines.append(f"| `{prefix}{f.name}` | {tp.__name__} | (section) | see `{prefix}{f.name}` below |")
            continue
        text = notes.get(f.name, "").replace("|", "\\|")
        lines.append(f"| `{prefix}{f.name}` | `{_type_name(tp).replace('|', chr(92) + '|')}` | {_default(f).replace('|', chr(92) + '|')} | {text} |")


def config_reference() -> str:
    """The Markdown reference of every RunConfig field (the text of docs/CONFIG.md)."""
    from red_megatron.config import RunConfig

    lines = [HEADER.rstrip()]
    todo = [(RunConfig, "")]
    while todo:
        cls, prefix = todo.pop(0)
        nested: list = []
        _section(cls, prefix, lines, nested)
        todo = nested + todo
    return "\n".join(lines) + "\n"
