"""Command-line overrides of a recipe's nested dataclass config: ``policy.tp=2 algo.eps_hi=0.28``.

A recipe (configs/) returns the whole config; the command line changes single fields. Each
value is parsed by the field's annotation (bool, int, float, str, Optional[...], tuple of
numbers, Literal), the touched dataclasses are rebuilt so their ``__post_init__``
validation runs again, and an unknown or ill-typed field is one ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any


def _parse(value: str, tp: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(value, arg, field)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        for a in allowed:
            if str(a) == value:
                return a
        raise ValueError(f"{field}={value!r}: expected one of {list(allowed)}")
    if origin in (tuple, list):
        items = [v for v in value.strip("()[]").split(",") if v.strip()]
        inner = typing.get_args(tp)
        inner_t = inner[0] if inner else str
        parsed = [_parse(v.strip(), inner_t, field) for v in items]
        return tuple(parsed) if origin is tuple else parsed
    if tp is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{field}={value!r}: expected a boolean (true/false)")
    if tp is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{field}={value!r}: expected an integer") from None
    if tp is float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{field}={value!r}: expected a number") from None
    if tp is str or tp is Any:
        return value
    if tp is dict or typing.get_origin(tp) is dict:
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{field}={value!r}: expected a JSON object ({e})") from None
    raise ValueError(f"{field}: fields of type {tp} cannot be set from the command line")


def _set(cfg: Any, path: list[str], value: str, full: str) -> Any:
    if not dataclasses.is_dataclass(cfg):
        raise ValueError(f"{full}: {'.'.join(path)} is not a config section")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    name = path[0]
    if name not in fields:
        raise ValueError(f"{full}: unknown field {name!r} of {type(cfg).__name__}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(type(cfg))
    if len(path) == 1:
        if dataclasses.is_dataclass(getattr(cfg, name)):
            raise ValueError(f"{full}: {name} is a section; set one of its fields, e.g. {name}.<field>=...")
        new = _parse(value, hints[name], full.split("=", 1)[0])
    else:
        new = _set(getattr(cfg, name), path[1:], value, full)
    return dataclasses.replace(cfg, **{name: new})  # reruns __post_init__ validation


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with each ``dotted.field=value`` applied in order."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected dotted.field=value")
        key, value = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), value.strip(), item)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
