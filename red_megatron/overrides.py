"""Command-line overrides of a recipe's nested dataclass config: ``policy.tp=2 algo.eps_hi=0.28``.

A recipe (configs/) returns the whole config; the command line changes single fields. Each
value is parsed by the field's annotation (bool, int, float, str, Optional[...], tuple of
numbers, Literal) and an unknown or ill-typed field is one ValueError naming it. All overrides
are applied first (on copies, without validation), then every touched dataclass is rebuilt once,
innermost first, so its ``__post_init__`` validation sees the final values: the order of the
overrides never matters (``rollout.tp_infer=2 rollout.executor=external_launcher`` and the reverse
are the same command line).

``config_from_dict`` rebuilds a nested config from ``dataclasses.asdict`` output (a run dir's
``run_config.json``), every field parsed by its annotation.
"""
from __future__ import annotations

import copy
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
    """A copy of ``cfg`` with the field at ``path`` set, WITHOUT running any ``__post_init__``."""
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
    out = copy.copy(cfg)  # a shallow copy: no __init__, no validation yet
    object.__setattr__(out, name, new)
    return out


def _validate(cfg: Any, touched: dict) -> Any:
    """Rebuild the touched dataclasses once, innermost first: each ``__post_init__`` runs on final values."""
    changes = {name: _validate(getattr(cfg, name), sub) for name, sub in touched.items() if sub}
    for name in touched:
        changes.setdefault(name, getattr(cfg, name))
    init = {f.name for f in dataclasses.fields(cfg) if f.init}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in init})


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with every ``dotted.field=value`` applied, then validated once.

    The result does not depend on the order of ``overrides`` (a field given twice: the last wins).
    """
    touched: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected dotted.field=value")
        key, value = item.split("=", 1)
        path = key.strip().split(".")
        cfg = _set(cfg, path, value.strip(), item)
        node = touched
        for part in path:
            node = node.setdefault(part, {})
    return _validate(cfg, touched) if touched else cfg


def _from_value(value: Any, tp: Any, field: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value, prefix=field + ".")
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return tuple(value) if origin is tuple else list(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return config_from_dict(arg, value, prefix=field + ".")
    return value


def config_from_dict(cls: type, data: dict, *, prefix: str = "") -> Any:
    """``cls`` rebuilt from ``dataclasses.asdict`` output; unknown keys are one ValueError naming them."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or cls.__name__}: expected a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown field(s) {[prefix + u for u in unknown]} of {cls.__name__}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _from_value(v, hints[k], prefix + k) for k, v in data.items()})


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
