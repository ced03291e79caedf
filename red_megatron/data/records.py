"""Raw rows from parquet or JSONL, checked field by field before anything is tokenised.

Two schemas:
- ``openr1``: the OpenR1-Math-46k / LUFFY layout of RED_SPEC: ``prompt`` (chat messages),
  ``target`` (the offline trace: a list of ``{role, content}`` dicts, a list of strings or a
  plain string; the first item is the trace), ``reward_model.ground_truth`` (a nested struct
  or a flattened column literally named ``reward_model.ground_truth``), ``data_source``.
- ``problem_answer``: plain ``problem`` / ``answer`` (and optionally ``solution``) fields,
  the shape of most benchmark files; the prompt is built from a template.
Field names are configurable (DataConfig). Every bad row raises one ``DataError`` that
names the file, the row (and JSONL line) and the field, and says what was expected.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

MISSING = object()
_ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A bad input row or field; the message names where and what was expected."""


@dataclass
class RawRecord:
    row: int  # 0-based index of the record in its file
    data_source: str
    messages: list[dict[str, str]]  # the prompt as chat messages
    gold: str  # the gold answer as a string (ints are accepted and converted)
    trace: str | None  # the offline trace text, None when the schema/config has none
    line: int | None = None  # JSONL line number (1-based), None for parquet


def where(path: str | Path, row: int, line: int | None = None) -> str:
    loc = f"{Path(path).name} row {row}"
    return f"{loc} (line {line})" if line is not None else loc


def get_field(rec: dict, key: str) -> Any:
    """``rec[key]``; a dotted key falls back to nested dicts (``reward_model.ground_truth``)."""
    if key in rec:
        return rec[key]
    cur: Any = rec
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return MISSING
        cur = cur[part]
    return cur


def iter_rows(path: str | Path, columns: list[str] | None = None,
              errors: list[str] | None = None) -> Iterator[tuple[int, int | None, dict]]:
    """(row, jsonl line or None, record dict) for each record of a .parquet or .jsonl/.json file.

    A JSONL line that is not UTF-8, not JSON or not an object raises a DataError naming the file and
    line; with ``errors`` (a list) its message is appended there instead and the line is skipped.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    suffix = p.suffix.lower()

    def bad(msg: str) -> None:
        if errors is None:
            raise DataError(msg)
        errors.append(msg)

    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"unreadable parquet file in {p}: expected a complete parquet file ({e})") from None
        names = pf.schema_arrow.names
        cols = None
        if columns is not None:
            # a dotted key may be a flattened column or a path into a struct column
            cols = sorted({c if c in names else c.split(".")[0] for c in columns} & set(names))
        row = 0
        for batch in pf.iter_batches(batch_size=4096, columns=cols):
            for rec in batch.to_pylist():
                yield row, None, rec
                row += 1
    elif suffix in (".jsonl", ".json"):
        with open(p, "rb") as f:
            row = 0
            for line_no, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad(f"{p.name} line {line_no}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        f"expected UTF-8 text")
                    continue
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    bad(f"{p.name} line {line_no}: not valid JSON ({e.msg}); expected one JSON object a line")
                    continue
                if not isinstance(rec, dict):
                    bad(f"{p.name} line {line_no}: expected a JSON object, got {type(rec).__name__}")
                    continue
                yield row, line_no, rec
                row += 1
    else:
        raise DataError(f"{p}: unsupported data file type {suffix!r}; expected .parquet or .jsonl")


def parse_messages(value: Any, loc: str, field: str) -> list[dict[str, str]]:
    if value is MISSING or value is None:
        raise DataError(f"{loc}: missing field {field!r}; expected a list of chat messages "
                        f"[{{'role': ..., 'content': ...}}]")
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{loc}: field {field!r} must be a non-empty list of chat messages, "
                        f"got {type(value).__name__}{'' if value else ' (empty)'}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{loc}: field {field!r}[{j}] must be a dict with str 'role' and 'content', got {m!r:.120}")
        if m["role"] not in _ROLES:
            raise DataError(f"{loc}: field {field!r}[{j}].role must be one of {_ROLES}, got {m['role']!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise DataError(f"{loc}: field {field!r} has no non-empty user message")
    return out


def parse_trace(value: Any, loc: str, field: str) -> str:
    """The first trace of a ``target`` field, as text; an empty trace is an error."""
    if value is MISSING or value is None:
        raise DataError(f"{loc}: missing field {field!r}; expected the offline trace "
                        f"(a string, a list of strings or a list of {{role, content}} dicts)")
    item = value
    if isinstance(value, (list, tuple)):
        if not value:
            raise DataError(f"{loc}: field {field!r} is an empty list; expected one offline trace")
        item = value[0]
    if isinstance(item, dict):
        if not isinstance(item.get("content"), str):
            raise DataError(f"{loc}: field {field!r}[0] must have a str 'content', got keys {sorted(item)}")
        item = item["content"]
    if not isinstance(item, str):
        raise DataError(f"{loc}: field {field!r} must hold trace text, got {type(item).__name__}")
    if not item.strip():
        raise DataError(f"{loc}: field {field!r} is an empty trace")
    return item


def parse_gold(value: Any, loc: str, field: str) -> str:
    if value is MISSING or value is None:
        raise DataError(f"{loc}: missing field {field!r}; expected the gold answer (str or int)")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{loc}: field {field!r} must be a str or a number, got {type(value).__name__} {value!r:.80}")
    if isinstance(value, float) and value != value:
        raise DataError(f"{loc}: field {field!r} is NaN")
    gold = str(value).strip()
    if not gold:
        raise DataError(f"{loc}: field {field!r} is an empty gold answer")
    return gold


def parse_text(value: Any, loc: str, field: str) -> str:
    if value is MISSING or value is None:
        raise DataError(f"{loc}: missing field {field!r}; expected a str")
    if not isinstance(value, str):
        raise DataError(f"{loc}: field {field!r} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{loc}: field {field!r} is empty")
    return value
