"""Prompt + offline-trace datasets: validated rows, chat-templated prompt ids, trace ids.

``RedDataset.load(cfg, tokenizer)`` reads the whole file, checks every row (records.py),
renders and tokenises every prompt (so a too-long prompt is found at load time, not at step
3,000) and, when configured, checks that math-verify can parse every gold answer. Offline
traces are tokenised lazily, per example: 46k traces of up to 8k tokens would not fit in
memory as Python ints. ``dataset[i]`` gives an :class:`Example` whose trace is truncated to
the response limit with EOS appended (RED_SPEC step 1), ``trace_truncated`` saying whether
it was cut.
"""
from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from red_megatron.data import chat
from red_megatron.data.records import (
    MISSING, DataError, RawRecord, get_field, iter_rows, parse_gold, parse_messages, parse_text, parse_trace, where,
)

log = logging.getLogger(__name__)

SCHEMAS = ("openr1", "problem_answer")
TOO_LONG_POLICIES = ("error", "drop")
ANSWER_CHECKS = ("error", "warn", "off")
MAX_REPORTED_ERRORS = 20  # bad rows named at once when a file is refused
_SCHEMA_DEFAULTS = {  # (answer_key, target_key)
    "openr1": ("reward_model.ground_truth", "target"),
    "problem_answer": ("answer", "solution"),
}


@dataclass(kw_only=True)
class DataConfig:
    """Where the data is, how it is laid out, the length limits and the epoch order."""
    path: str  # the training file: .parquet or .jsonl rows in data.schema's layout (README, Data formats)
    # row layout: 'openr1' (chat prompt, reward_model.ground_truth, target trace) or 'problem_answer'
    schema: str = "openr1"
    prompt_key: str = "prompt"  # openr1: chat messages
    problem_key: str = "problem"  # problem_answer: the question text
    # None: the schema's own (openr1: reward_model.ground_truth / target; problem_answer: answer /
    # solution), resolved when read (answer_field / target_field), so data.schema=... alone switches both
    answer_key: str | None = None
    # the offline trace's column; None: the schema's (openr1: target; problem_answer: solution)
    target_key: str | None = None
    # the column naming each row's benchmark/source (metrics and eval tables group by it)
    data_source_key: str = "data_source"
    default_data_source: str | None = None  # None: the file's stem, for rows without a data_source
    prompt_template: str = "{problem}"  # problem_answer: the user turn; may add an instruction
    system_prompt: str | None = None  # a system turn (openr1: replaces the row's own system turn)
    # None or "tokenizer": the tokenizer's own; a name of chat.NAMED_TEMPLATES (qwen25_math, luffy);
    # a path ending in .jinja (the file is read); or a literal Jinja template (containing "{{")
    chat_template: str | None = None
    # the offline trace column: None = what the preset needs (a training run: red, sft, luffy... read it; grpo
    # and the other online-only presets read prompt/answer files as they are; elsewhere: required)
    require_trace: bool | None = None
    max_prompt_tokens: int = 1024  # longest templated prompt; a longer one is refused or dropped (too_long_prompt)
    max_response_tokens: int = 8192  # the trace, EOS included, is cut to this many tokens
    too_long_prompt: str = "error"  # "error": fail naming the row; "drop": skip, count and warn
    eos_token: str | None = None  # None: the tokenizer's eos_token
    # gold answers math-verify cannot turn into math: "error" (name the row), "warn" (count
    # and keep: the row can only score by identical string) or "off" (skip the ~5-30 ms/answer)
    answer_check: str = "error"
    answer_check_workers: int = 0  # >0: check in that many processes (46k rows take minutes in one)
    # offline traces with no \boxed{} answer, or boxing another answer than the gold (graded unless
    # answer_check='off'): counted and reported at load; past this fraction of the traces, refused
    max_bad_trace_fraction: float = 1.0
    limit: int | None = None  # read only the first N rows (after validation of those rows)
    global_batch_size: int = 64  # prompts per step, over all DP ranks
    shuffle: bool = True  # shuffle the order every epoch (seeded by data.seed and the epoch)
    seed: int = 0  # the data order's seed

    def __post_init__(self):
        if self.schema not in SCHEMAS:
            raise ValueError(f"DataConfig.schema must be one of {SCHEMAS}, got {self.schema!r}")
        if self.too_long_prompt not in TOO_LONG_POLICIES:
            raise ValueError(f"DataConfig.too_long_prompt must be one of {TOO_LONG_POLICIES}, "
                             f"got {self.too_long_prompt!r}")
        if self.answer_check not in ANSWER_CHECKS:
            raise ValueError(f"DataConfig.answer_check must be one of {ANSWER_CHECKS}, got {self.answer_check!r}")
        if not isinstance(self.answer_check_workers, int) or not 0 <= self.answer_check_workers <= 256:
            raise ValueError(f"DataConfig.answer_check_workers must be an int in [0, 256], "
                             f"got {self.answer_check_workers!r}")
        for name in ("max_prompt_tokens", "max_response_tokens", "global_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DataConfig.{name} must be an int >= 1, got {v!r}")
        if self.max_response_tokens < 2:
            raise ValueError(f"DataConfig.max_response_tokens must be >= 2 (one token and EOS), "
                             f"got {self.max_response_tokens}")
        if not isinstance(self.max_bad_trace_fraction, (int, float)) or not 0 <= self.max_bad_trace_fraction <= 1:
            raise ValueError(f"DataConfig.max_bad_trace_fraction must be a fraction in [0, 1], "
                             f"got {self.max_bad_trace_fraction!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"DataConfig.limit must be None or an int >= 1, got {self.limit!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"DataConfig.seed must be an int >= 0, got {self.seed!r}")
        if "{problem}" not in self.prompt_template:
            raise ValueError(f"DataConfig.prompt_template must contain '{{problem}}', got {self.prompt_template!r}")
        for name in ("path", "prompt_key", "problem_key", "answer_key", "target_key", "data_source_key"):
            v = getattr(self, name)
            if (v is not None or name not in ("answer_key", "target_key")) and (not isinstance(v, str) or not v):
                raise ValueError(f"DataConfig.{name} must be a non-empty str, got {v!r}")
        if self.system_prompt is not None and (not isinstance(self.system_prompt, str) or not self.system_prompt.strip()):
            raise ValueError(f"DataConfig.system_prompt must be None or a non-empty str, got {self.system_prompt!r}")

    @property
    def answer_field(self) -> str:
        """The gold answer's field: answer_key, else the schema's default."""
        return self.answer_key or _SCHEMA_DEFAULTS[self.schema][0]

    @property
    def target_field(self) -> str:
        """The offline trace's field: target_key, else the schema's default."""
        return self.target_key or _SCHEMA_DEFAULTS[self.schema][1]


@dataclass
class Example:
    """One prompt, ready for rollout and the offline term."""
    index: int  # position in the dataset (after drops)
    row: int  # row in the source file, for error messages and eval records
    data_source: str
    messages: list[dict[str, str]]
    prompt_ids: list[int]
    gold: str
    trace_ids: list[int] | None  # truncated to max_response_tokens, EOS last; None without a trace
    trace_truncated: bool = False


@dataclass
class LoadStats:
    rows_read: int = 0
    prompts_dropped_too_long: int = 0
    dropped_rows: list[int] = field(default_factory=list)
    unparseable_answer_rows: list[int] = field(default_factory=list)  # kept under answer_check="warn"
    traces_truncated: int = 0  # traces longer than max_response_tokens (EOS included)
    traces_cut_before_answer: list[int] = field(default_factory=list)  # rows whose cut loses the \boxed{} answer
    trace_quality: Any = None  # data.trace_check.TraceQuality: traces with no answer / another answer


def has_boxed_answer(text: str) -> bool:
    """Whether ``text`` holds a complete ``\\boxed{...}`` (its braces closed)."""
    start = text.rfind("\\boxed{")
    while start >= 0:
        depth = 0
        for ch in text[start + len("\\boxed"):]:
            depth += (ch == "{") - (ch == "}")
            if depth == 0:
                return True
        start = text.rfind("\\boxed{", 0, start)
    return False


def read_records(cfg: DataConfig) -> list[RawRecord]:
    """Every row of ``cfg.path`` as a checked RawRecord (no tokenizer needed)."""
    keys = [cfg.data_source_key, cfg.answer_field]
    if cfg.schema == "openr1":
        keys.append(cfg.prompt_key)
    else:
        keys.append(cfg.problem_key)
    if cfg.require_trace is not False:
        keys.append(cfg.target_field)
    default_source = cfg.default_data_source or Path(cfg.path).stem
    out: list[RawRecord] = []
    errors: list[str] = []  # every bad row up to MAX_REPORTED_ERRORS, reported at once
    for row, line, rec in iter_rows(cfg.path, columns=keys, errors=errors):
        if cfg.limit is not None and row >= cfg.limit or len(errors) >= MAX_REPORTED_ERRORS:
            break
        try:
            out.append(_record(cfg, row, line, rec, default_source))
        except DataError as e:
            errors.append(str(e))
    if errors:
        errors = errors[:MAX_REPORTED_ERRORS]
        more = " (stopped at the first 20)" if len(errors) == MAX_REPORTED_ERRORS else ""
        raise DataError(f"{len(errors)} bad row(s) in {cfg.path}{more}: " + "; ".join(errors))
    if not out:
        raise DataError(f"{cfg.path}: no rows")
    return out


def _record(cfg: DataConfig, row: int, line: int | None, rec: dict, default_source: str) -> RawRecord:
    loc = where(cfg.path, row, line)
    if cfg.schema == "openr1":
        messages = parse_messages(get_field(rec, cfg.prompt_key), loc, cfg.prompt_key)
        if cfg.system_prompt:  # the configured system turn replaces the row's own
            messages = [{"role": "system", "content": cfg.system_prompt}] + [m for m in messages if m["role"] != "system"]
    else:
        problem = parse_text(get_field(rec, cfg.problem_key), loc, cfg.problem_key)
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
        messages.append({"role": "user", "content": cfg.prompt_template.replace("{problem}", problem)})
    gold = parse_gold(get_field(rec, cfg.answer_field), loc, cfg.answer_field)
    trace = parse_trace(get_field(rec, cfg.target_field), loc, cfg.target_field) \
        if cfg.require_trace is not False else None
    src = get_field(rec, cfg.data_source_key)
    if src is None or src is MISSING:  # absent: the file's name
        src = default_source
    elif not isinstance(src, str) or not src:
        raise DataError(f"{loc}: field {cfg.data_source_key!r} must be a non-empty str, got {src!r:.80}")
    return RawRecord(row=row, data_source=src, messages=messages, gold=gold, trace=trace, line=line)


def check_answers_parse(records: list[RawRecord], path: str, policy: str = "error",
                        workers: int = 0) -> list[int]:
    """Rows whose gold answer math-verify cannot parse; raises on the first under "error".

    Such a row could never be rewarded by an equivalent answer, only by an identical string.
    Each distinct answer is parsed once, in this process or in ``workers`` verifier processes.
    """
    from red_megatron.reward.verify import gold_parses

    golds = list(dict.fromkeys(r.gold for r in records))
    if workers > 0:
        from red_megatron.reward.pool import VerifyPool

        with VerifyPool(fn_path="red_megatron.reward.verify:gold_parses", num_workers=workers,
                        timeout_s=30.0) as pool:
            out = pool.map([(g, 5) for g in golds])
        seen = {g: status == "ok" and bool(ok) for g, (status, ok) in zip(golds, out)}
    else:
        # math-verify's timeout is signal.alarm: only in the main thread
        timeout_s = 5 if threading.current_thread() is threading.main_thread() else 0
        seen = {g: gold_parses(g, timeout_s=timeout_s) for g in golds}
    bad: list[int] = []
    for r in records:
        if not seen[r.gold]:
            if policy == "error":
                raise DataError(f"{where(path, r.row, r.line)}: the gold answer {r.gold!r:.80} cannot be parsed by "
                                f"math-verify; fix the row or set DataConfig.answer_check='warn'")
            bad.append(r.row)
    if bad:
        msg = f"{path}: {len(bad)} gold answers math-verify cannot parse (rows {bad[:5]}...)"
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)
    return bad


class RedDataset:
    """A map-style dataset of :class:`Example` (``len``, ``ds[i]``)."""

    def __init__(self, cfg: DataConfig, tokenizer: Any, records: list[RawRecord],
                 prompt_ids: list[np.ndarray], stats: LoadStats):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.records = records
        self._prompt_ids = prompt_ids
        self.stats = stats
        self.eos_id = chat.eos_token_id(tokenizer, cfg.eos_token)

    @classmethod
    def load(cls, cfg: DataConfig, tokenizer: Any) -> "RedDataset":
        records = read_records(cfg)
        stats = LoadStats(rows_read=len(records))
        if cfg.answer_check != "off":
            stats.unparseable_answer_rows = check_answers_parse(records, cfg.path, cfg.answer_check,
                                                                 cfg.answer_check_workers)
        if cfg.require_trace is not False:  # the traces were read: report (and bound) their quality
            from red_megatron.data.trace_check import check_traces

            stats.trace_quality = check_traces(records, cfg.path, cfg.max_bad_trace_fraction,
                                               grade=cfg.answer_check != "off", workers=cfg.answer_check_workers)
        texts = [chat.render_prompt(tokenizer, r.messages, cfg.chat_template) for r in records]
        ids = chat.encode_text(tokenizer, texts)
        kept_records, kept_ids = [], []
        for r, p in zip(records, ids):
            if len(p) > cfg.max_prompt_tokens:
                if cfg.too_long_prompt == "error":
                    raise DataError(
                        f"{where(cfg.path, r.row, r.line)}: prompt is {len(p)} tokens after the chat template, "
                        f"over DataConfig.max_prompt_tokens={cfg.max_prompt_tokens}; raise the limit or set "
                        f"too_long_prompt='drop'")
                stats.prompts_dropped_too_long += 1
                stats.dropped_rows.append(r.row)
                continue
            kept_records.append(r)
            kept_ids.append(np.asarray(p, dtype=np.int32))
        if stats.prompts_dropped_too_long:
            msg = (f"{cfg.path}: dropped {stats.prompts_dropped_too_long} of {len(records)} prompts longer than "
                   f"max_prompt_tokens={cfg.max_prompt_tokens} (first rows: {stats.dropped_rows[:5]})")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
        if not kept_records:
            raise DataError(f"{cfg.path}: every prompt is longer than max_prompt_tokens={cfg.max_prompt_tokens}")
        ds = cls(cfg, tokenizer, kept_records, kept_ids, stats)
        ds._check_trace_cuts()
        return ds

    def _check_trace_cuts(self) -> None:
        """Count the traces max_response_tokens cuts, and those cut before their \\boxed{} answer; warn.

        Only traces with more UTF-8 bytes than the limit can be cut (a token is at least one byte), so
        a file of short traces costs nothing; the long ones are tokenised once, in batches.
        """
        limit = self.cfg.max_response_tokens - 1
        cand = [i for i, r in enumerate(self.records) if r.trace is not None and len(r.trace.encode()) > limit]
        st = self.stats
        for lo in range(0, len(cand), 256):
            idx = cand[lo:lo + 256]
            texts = [self.records[i].trace for i in idx]
            for i, text, ids in zip(idx, texts, chat.encode_text(self.tokenizer, texts)):
                if ids and ids[-1] == self.eos_id:
                    ids = ids[:-1]
                if len(ids) <= limit:
                    continue
                st.traces_truncated += 1
                if has_boxed_answer(text) and not has_boxed_answer(self.tokenizer.decode(ids[:limit])):
                    st.traces_cut_before_answer.append(self.records[i].row)
        if st.traces_cut_before_answer:
            n, rows = len(st.traces_cut_before_answer), st.traces_cut_before_answer[:5]
            msg = (f"{self.cfg.path}: {st.traces_truncated} of {len(self)} offline traces are longer than "
                   f"max_response_tokens={self.cfg.max_response_tokens}; {n} of them are cut before their \\boxed{{}} "
                   f"answer (first rows: {rows}), so they score 0 as offline samples: raise max_response_tokens "
                   f"or filter them out")
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)

    def __len__(self) -> int:
        return len(self.records)

    def prompt_ids(self, i: int) -> list[int]:
        """The chat-templated prompt token ids of example i."""
        return self._prompt_ids[i].tolist()

    def trace_ids(self, i: int) -> tuple[list[int], bool] | None:
        """(trace ids cut to max_response_tokens with EOS last, was it cut?) for example i."""
        trace = self.records[i].trace
        if trace is None:
            return None
        ids = chat.encode_text(self.tokenizer, [trace])[0]
        if ids and ids[-1] == self.eos_id:
            ids = ids[:-1]  # the trace text already ended in EOS: keep exactly one
        limit = self.cfg.max_response_tokens - 1
        truncated = len(ids) > limit
        return ids[:limit] + [self.eos_id], truncated

    def __getitem__(self, i: int) -> Example:
        if not -len(self) <= i < len(self):
            raise IndexError(f"dataset index {i} out of range for {len(self)} examples")
        i %= len(self)
        r = self.records[i]
        tr = self.trace_ids(i)
        return Example(index=i, row=r.row, data_source=r.data_source, messages=r.messages,
                       prompt_ids=self.prompt_ids(i), gold=r.gold,
                       trace_ids=None if tr is None else tr[0],
                       trace_truncated=False if tr is None else tr[1])

    def count_truncated_traces(self) -> int:
        """How many traces the response limit cuts (tokenises all of them: a report, not a hot path)."""
        return sum(1 for i in range(len(self)) if (t := self.trace_ids(i)) is not None and t[1])


def load_dataset(cfg: DataConfig, tokenizer: Any) -> RedDataset:
    return RedDataset.load(cfg, tokenizer)
