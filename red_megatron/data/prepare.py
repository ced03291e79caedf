"""Turn a public math dataset into the project's training / evaluation schema (``openr1``).

Input: a local ``.parquet`` / ``.jsonl`` copy, or a Hugging Face ``datasets`` name (``org/name``,
only where the hub is reachable and ``datasets`` is installed). Rows are read in one of two layouts:
- ``openr1``: already ``prompt`` (chat messages) + ``reward_model.ground_truth`` (+ ``target``): the
  LUFFY / OpenR1-Math-46k files and ``math_eval.parquet``; kept, optionally with a new system turn;
- ``problem_answer``: a question field and an answer field (``problem``/``answer``, ``question``/
  ``answer``, ...) and optionally a worked solution (becomes the offline ``target`` trace).
Output (parquet, or JSONL by suffix): ``data_source``, ``prompt``, ``reward_model`` {ground_truth,
style}, ``target`` when a trace exists: what ``DataConfig(schema="openr1")`` reads. Every output row
is read back through the data module's own checks before the file is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from red_megatron.data.chat import LUFFY_SYSTEM
from red_megatron.data.records import MISSING, DataError, get_field, iter_rows, parse_gold, parse_text, where

LAYOUTS = ("auto", "openr1", "problem_answer")
PROBLEM_KEYS = ("problem", "question", "prompt", "input")
ANSWER_KEYS = ("answer", "final_answer", "gold", "solution_answer", "expected_answer")
SOLUTION_KEYS = ("solution", "reasoning", "target")


@dataclass(kw_only=True)
class PrepareConfig:
    source: str  # a .parquet/.jsonl path, or a datasets name
    out: str
    layout: str = "auto"
    split: str = "train"  # datasets names only
    problem_key: str | None = None  # None: the first of PROBLEM_KEYS present
    answer_key: str | None = None
    solution_key: str | None = None  # a worked solution: the offline trace (None: look for SOLUTION_KEYS)
    data_source: str | None = None  # None: the row's data_source, else the source's stem
    system_prompt: str | None = LUFFY_SYSTEM  # "" or None: no system turn (openr1 rows keep theirs)
    prompt_template: str = "{problem}"
    limit: int | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout must be one of {LAYOUTS}, got {self.layout!r}")
        if "{problem}" not in self.prompt_template:
            raise ValueError(f"--prompt-template must contain '{{problem}}', got {self.prompt_template!r}")
        if Path(self.out).suffix.lower() not in (".parquet", ".jsonl"):
            raise ValueError(f"--out {self.out!r}: expected a .parquet or .jsonl path")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")


def _is_local(source: str) -> bool:
    return Path(source).suffix.lower() in (".parquet", ".jsonl", ".json") or Path(source).exists()


def _hub_rows(cfg: PrepareConfig):
    try:
        import datasets
    except ImportError:
        raise ValueError(f"--source {cfg.source!r} is not a local .parquet/.jsonl file, and reading a hub dataset "
                         "needs the `datasets` package (pip install datasets); or download a copy and pass its "
                         "path") from None
    try:
        ds = datasets.load_dataset(cfg.source, split=cfg.split)
    except Exception as e:  # noqa: BLE001 - offline, unknown name, gated: all mean the same to the user
        raise ValueError(f"could not load {cfg.source!r} (split {cfg.split!r}) from the Hugging Face hub "
                         f"({type(e).__name__}: {str(e)[:200]}); without a reachable hub, download a copy and pass "
                         "its .parquet/.jsonl path") from None
    for i, rec in enumerate(ds):
        yield i, None, rec


def _pick(rec: dict, explicit: str | None, candidates: tuple[str, ...]) -> str | None:
    if explicit:
        return explicit
    for k in candidates:
        if get_field(rec, k) is not MISSING:
            return k
    return None


def _convert(cfg: PrepareConfig, rec: dict, loc: str, default_source: str) -> dict:
    layout = cfg.layout
    if layout == "auto":
        layout = "openr1" if isinstance(rec.get("prompt"), list) and get_field(
            rec, "reward_model.ground_truth") is not MISSING else "problem_answer"
    src = cfg.data_source or rec.get("data_source") or default_source
    if layout == "openr1":
        from red_megatron.data.records import parse_messages

        messages = parse_messages(get_field(rec, "prompt"), loc, "prompt")
        gold = parse_gold(get_field(rec, "reward_model.ground_truth"), loc, "reward_model.ground_truth")
        if cfg.system_prompt and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": cfg.system_prompt}] + messages
        target = rec.get("target")
    else:
        pk = _pick(rec, cfg.problem_key, PROBLEM_KEYS)
        ak = _pick(rec, cfg.answer_key, ANSWER_KEYS)
        if pk is None or ak is None:
            raise DataError(f"{loc}: no {'question' if pk is None else 'answer'} field; expected one of "
                            f"{list(PROBLEM_KEYS if pk is None else ANSWER_KEYS)} (or --problem-key/--answer-key), "
                            f"the row has {sorted(rec)}")
        problem = parse_text(get_field(rec, pk), loc, pk)
        gold = parse_gold(get_field(rec, ak), loc, ak)
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
            {"role": "user", "content": cfg.prompt_template.replace("{problem}", problem)}]
        sk = _pick(rec, cfg.solution_key, SOLUTION_KEYS)
        sol = get_field(rec, sk) if sk else MISSING
        target = [{"role": "assistant", "content": sol}] if isinstance(sol, str) and sol.strip() else None
    out = {"data_source": str(src), "prompt": messages, "reward_model": {"ground_truth": gold, "style": "rule"}}
    if target:
        out["target"] = target
    return out


def prepare(cfg: PrepareConfig) -> dict:
    """Convert ``cfg.source`` into ``cfg.out``; returns counts {rows, with_trace, data_sources}."""
    if _is_local(cfg.source):
        rows = iter_rows(cfg.source)
        default_source = Path(cfg.source).stem
    else:
        rows = _hub_rows(cfg)
        default_source = cfg.source.rsplit("/", 1)[-1]
    out_rows = []
    for row, line, rec in rows:
        if cfg.limit is not None and len(out_rows) >= cfg.limit:
            break
        out_rows.append(_convert(cfg, rec, where(cfg.source, row, line), default_source))
    if not out_rows:
        raise DataError(f"{cfg.source}: no rows")
    if len({"target" in r for r in out_rows}) > 1:
        raise DataError(f"{cfg.source}: some rows have a solution and some do not; expected all or none "
                        "(set --solution-key, or filter the rows)")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix}")  # the suffix tells the reader the format
    try:
        if out.suffix.lower() == ".jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows), encoding="utf-8")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(out_rows), tmp)
        from red_megatron.data.dataset import DataConfig, read_records

        # the project's own reader must accept every row before the file takes its name
        read_records(DataConfig(path=str(tmp), schema="openr1", require_trace="target" in out_rows[0]))
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    sources: dict[str, int] = {}
    for r in out_rows:
        sources[r["data_source"]] = sources.get(r["data_source"], 0) + 1
    return {"rows": len(out_rows), "with_trace": sum("target" in r for r in out_rows), "data_sources": sources}
