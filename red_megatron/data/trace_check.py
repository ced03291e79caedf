"""Trace quality at load: the offline traces RED imitates must end in the gold answer.

A trace without a ``\\boxed{}`` final answer, or whose boxed answer is not the gold, scores 0 as an
offline sample and RED then pushes away from it; a file of such traces trains silently on nothing
useful. :func:`check_traces` counts both kinds (the second graded by the run's grader, the exact
string first), reports them at load, and refuses the file when together they pass
``DataConfig.max_bad_trace_fraction``, naming the counts and the first rows.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class TraceQuality:
    traces: int = 0
    no_answer_rows: list[int] = field(default_factory=list)  # no well-formed \boxed{} in the trace
    wrong_answer_rows: list[int] = field(default_factory=list)  # boxed, but not the gold (per the grader)
    graded: bool = True  # False: answer_check='off', the answers were not compared

    @property
    def bad(self) -> int:
        return len(self.no_answer_rows) + len(self.wrong_answer_rows)


def check_traces(records, path: str, max_fraction: float, *, grade: bool = True, workers: int = 0) -> TraceQuality:
    """Count the bad traces of ``records`` (RawRecord with ``trace``); raise DataError past ``max_fraction``."""
    from red_megatron.data.records import DataError
    from red_megatron.reward.extract import extract_boxed, normalize_for_exact_match

    q = TraceQuality(graded=grade)
    to_grade: list[tuple[int, str, str]] = []
    for r in records:
        if r.trace is None:
            continue
        q.traces += 1
        pred = extract_boxed(r.trace)
        if pred is None:
            q.no_answer_rows.append(r.row)
        elif grade and normalize_for_exact_match(pred) != normalize_for_exact_match(r.gold):
            to_grade.append((r.row, pred, r.gold))
    if to_grade:
        q.wrong_answer_rows = [row for (row, _, _), ok in zip(to_grade, _grade(to_grade, workers)) if not ok]
    if not q.traces or not q.bad:
        return q
    msg = (f"{path}: {len(q.no_answer_rows)} of {q.traces} offline traces have no \\boxed{{}} final answer "
           f"(first rows {q.no_answer_rows[:5]})" + (f" and {len(q.wrong_answer_rows)} box an answer that is not the "
                                                     f"gold (first rows {q.wrong_answer_rows[:5]})" if grade else ""))
    if q.bad > max_fraction * q.traces:
        raise DataError(f"{msg}: {100 * q.bad / q.traces:.1f}% bad, over data.max_bad_trace_fraction={max_fraction}; "
                        f"expected traces that end in the gold answer (RED would push away from the others)")
    log.warning(msg)
    return q


def _grade(items: list[tuple[int, str, str]], workers: int) -> list[bool]:
    if workers > 0:
        from red_megatron.reward.pool import VerifyPool

        with VerifyPool(fn_path="red_megatron.reward.verify:verify_answer", num_workers=workers, timeout_s=30.0) as pool:
            out = pool.map([(p, g, 5) for _, p, g in items])
        return [status == "ok" and bool(v[0]) for status, v in out]
    from red_megatron.reward.verify import verify_answer

    # math-verify's timeout is signal.alarm: only in the main thread
    timeout_s = 5 if threading.current_thread() is threading.main_thread() else 0
    if timeout_s == 0:
        from red_megatron.reward.grader import grade

        return [grade(p, g, timeout_s=None)[0] for _, p, g in items]
    return [verify_answer(p, g, timeout_s)[0] for _, p, g in items]
