"""Command-line overrides of a recipe's nested dataclass config: ``policy.tp=2 algo.eps_hi=0.28``.

A recipe (configs/) returns the whole config; the command line changes single fields. Each
value is parsed by the field's annotation (bool, int, float, str, Optional[...], tuple of
numbers, Literal) and an unknown or ill-typed field is one ValueError naming it. All overrides
are applied first (on copies, without validation), then every touched dataclass is rebuilt once,
innermost first, so its ``__post_init__`` validation sees the final values: the order of the
overrides never matters (``rollout.tp_infer=2 rollout.executor=external_launcher`` and the reverse
are the same command line).

``config_from_dict`` rebuilds a nested config from ``dataclasses.asdict`` output (a run dir's
``run_config.json``), every field parsed by its annotation. ``read_config_file`` reads a YAML or JSON
config file (``red-train --config FILE``) into ``(key, value)`` items that ``apply_overrides`` takes
beside the command line's strings: the same dotted fields, values already typed by the file's
parser and checked against the annotations here (PyYAML parses; the typing stays this module's).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from typing import Any


def _union(value: Any, tp: Any, field: str, convert, is_null: bool) -> Any:
    """``value`` as the first member of the union ``tp`` that ``convert`` accepts (None where it is null)."""
    args = typing.get_args(tp)
    if is_null and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return convert(value, arg, field)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError("; ".join(errors))


def _parse(value: str, tp: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(value, tp, field, _parse, value.lower() in ("none", "null"))
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


def _coerce(value: Any, tp: Any, field: str) -> Any:
    """A value a config file typed (YAML/JSON: bool, int, float, list, null) checked against ``tp``;
    strings go through the command line's parser (PyYAML reads ``1e-4`` as a string)."""
    if isinstance(value, str):
        return _parse(value, tp, field)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(value, tp, field, _coerce, value is None)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value in allowed and any(type(a) is type(value) for a in allowed):
            return value
        raise ValueError(f"{field}={value!r}: expected one of {list(allowed)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{field}={value!r}: expected a list")
        inner = typing.get_args(tp)
        inner_t = inner[0] if inner else Any
        parsed = [_coerce(v, inner_t, field) for v in value]
        return tuple(parsed) if origin is tuple else parsed
    expected = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    if tp is bool and isinstance(value, bool) or tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in expected:
        raise ValueError(f"{field}={value!r}: expected {expected[tp]}")
    if tp is Any or (tp is dict or origin is dict) and isinstance(value, dict):
        return value
    raise ValueError(f"{field}={value!r}: expected {tp}")


def _set(cfg: Any, path: list[str], value: Any, full: str) -> Any:
    """A copy of ``cfg`` with the field at ``path`` set, WITHOUT running any ``__post_init__``.
    ``value``: a command-line string, or a value a config file typed."""
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
        new = _coerce(value, hints[name], full.split("=", 1)[0])
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


def apply_overrides(cfg: Any, overrides: list) -> Any:
    """Return a copy of ``cfg`` with every ``dotted.field=value`` applied, then validated once.

    An item is a command-line string ``dotted.field=value`` or a config file's ``(dotted.field, value,
    label)`` (``read_config_file``; label names the file in errors). The result does not depend on
    the order of ``overrides`` (a field given twice: the last wins).
    """
    touched: dict = {}
    for item in overrides:
        if isinstance(item, tuple):
            key, value, label = item
            full = f"{key} (in {label})"
        else:
            if "=" not in item:
                raise ValueError(f"override {item!r}: expected dotted.field=value")
            key, value = item.split("=", 1)
            value, full = value.strip(), item
        path = key.strip().split(".")
        cfg = _set(cfg, path, value, full)
        node = touched
        for part in path:
            node = node.setdefault(part, {})
    return _validate(cfg, touched) if touched else cfg


def _from_value(value: Any, tp: Any, field: str) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value, prefix=field + ".")
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return config_from_dict(arg, value, prefix=field + ".")
    return _coerce(value, tp, field)


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


def flatten_config(data: dict, cfg: Any, *, label: str, prefix: str = "") -> list[tuple[str, Any, str]]:
    """A config file's mapping as ``(dotted.field, value, label)`` items for ``apply_overrides``: nested
    sections (``policy: {lr: 1e-4}``) and dotted keys (``policy.lr: 1e-4``) alike, leaves typed."""
    out = []
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{label}: key {key!r} is not a field name")
        path = prefix + key
        head, _, rest = key.partition(".")
        sub = getattr(cfg, head, None) if dataclasses.is_dataclass(cfg) else None
        if rest and dataclasses.is_dataclass(sub):
            out += flatten_config({rest: value}, sub, label=label, prefix=prefix + head + ".")
        elif isinstance(value, dict) and dataclasses.is_dataclass(sub):
            out += flatten_config(value, sub, label=label, prefix=path + ".")
        else:
            out.append((path, value, label))
    return out


def read_config_file(path) -> tuple[dict, bool]:
    """``(mapping, whole)`` from a YAML (.yaml/.yml) or JSON (.json) config file. ``whole``: the file is a
    run dir's ``run_config.json`` (its ``config`` holds every field, so it replays that run by itself)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no config file at --config {path}: expected an existing .yaml, .yml or .json file")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"bad YAML in {path}: {' '.join(str(e).split())}") from None
    elif p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"bad JSON in {path}: {e}") from None
    else:
        raise ValueError(f"config file {path}: expected a .yaml, .yml or .json file")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a mapping of section.field: value, got {type(data).__name__}")
    whole = isinstance(data.get("config"), dict) and "effective" in data
    return (data["config"] if whole else data), whole
