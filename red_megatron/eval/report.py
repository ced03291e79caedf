"""Evaluation results as JSON and as a markdown table shaped like the paper's Table 2.

Table 2: one row per model/preset; columns the six benchmarks' accuracy (percent), then the
overall accuracy ("Avg.", the mean of the benchmark accuracies) and LEN (mean response
tokens, the mean of the benchmark LENs). Benchmarks a result lacks show "–"; columns are
the paper's six in the paper's order first, then any other data_source in name order.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any

from red_megatron.eval.protocol import BENCHMARK_ORDER, EvalResult


def result_record(name: str, result: EvalResult, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON a results file holds: the name (a table row), the numbers and how they were made."""
    return {"name": name, **result.to_dict(with_samples=False),
            "meta": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     "python": platform.python_version(), **(meta or {})}}


def write_result(out_dir: str | Path, name: str, result: EvalResult, meta: dict[str, Any] | None = None) -> Path:
    """``results.json`` (aggregate) and ``samples.jsonl`` (one line a response) under out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(result_record(name, result, meta), indent=2))
    with open(out / "samples.jsonl", "w") as f:
        for s in result.samples:
            f.write(json.dumps(s) + "\n")
    return path


def load_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        rec = json.loads(Path(p).read_text())
        if "name" not in rec or "benchmarks" not in rec:
            raise ValueError(f"{p}: not an evaluation results.json (needs 'name' and 'benchmarks')")
        out.append(rec)
    return out


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Rows = records (``result_record`` dicts), columns = benchmarks' Acc, then Avg. and LEN."""
    present = {b for r in records for b in r["benchmarks"]}
    cols = [b for b in BENCHMARK_ORDER if b in present] + sorted(present - set(BENCHMARK_ORDER))
    head = ["Model", *cols, "Avg.", "LEN"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in records:
        cells = [str(r["name"])]
        for c in cols:
            b = r["benchmarks"].get(c)
            cells.append(_fmt(None if b is None else b["acc"], 2))
        cells += [_fmt(r["acc"], 2), _fmt(r["len"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def protocol_note(records: list[dict[str, Any]]) -> str:
    """One line a benchmark saying how its column was measured (problems × samples each)."""
    notes = []
    for r in records:
        parts = []
        for n, b in r["benchmarks"].items():
            flag = "" if b["protocol"] == b["paper_protocol"] else f" (paper: {b['paper_protocol']})"
            parts.append(f"{n}: {b['protocol']}{flag} over {b['n_problems']} problems")
        notes.append(f"- {r['name']}: " + "; ".join(parts))
    return "\n".join(notes) + "\n"
