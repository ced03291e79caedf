"""The paper's evaluation protocol (RED_SPEC "Evaluation"), independent of any engine.

AIME24, AIME25 and AMC: avg@32 at T=0.6; MATH-500, Minerva, OlympiadBench: one sample at
T=0.6 (pass@1). math_eval.parquet already repeats every AIME/AMC row 32 times, as published,
so the protocol here is: one sample per *row*, each row with its own seed, then
- a benchmark's accuracy = the mean over its unique problems (same data_source and prompt)
  of the mean reward over that problem's rows. With k rows per problem this is avg@k; with
  one row it is pass@1; when every problem has the same number of rows (the published file)
  it equals the plain row mean. Grouping first keeps it avg@k when a subsample leaves
  problems with unequal repeat counts.
- LEN = the mean response length in tokens over all of a benchmark's samples.
- Overall (the paper's "Avg."): the unweighted mean of the benchmark accuracies, and the same
  mean of the benchmark LENs. Row-weighted means are reported too (``acc_micro``, ``len_micro``).

Generation is injected: ``generate_fn(prompt_ids_list, temperature, max_tokens, seed)`` returns
one ``(token_ids, text)`` per prompt; prompt i of a call must be sampled with its own seed
derived from ``(seed, i)``, so repeated rows are independent samples. The call for rows
``[lo, lo + batch_size)`` gets ``seed = cfg.seed + lo``. Keeping the engine out lets the core
run and be tested without vLLM.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from red_megatron.data.dataset import RedDataset

GenerateFn = Callable[[list[list[int]], float, int, int], Sequence[tuple[Sequence[int], str]]]


@dataclass(frozen=True)
class Benchmark:
    name: str  # the paper's column name
    aliases: tuple[str, ...]  # data_source values that mean this benchmark (lower case)
    protocol: str  # how the rows are meant: "avg@32" or "pass@1"


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("AIME24", ("aime24", "aime", "aime2024", "aime_2024"), "avg@32"),
    Benchmark("AIME25", ("aime25", "aime2025", "aime_2025"), "avg@32"),
    Benchmark("AMC", ("amc", "amc23", "amc2023"), "avg@32"),
    Benchmark("MATH-500", ("math500", "math", "math_500", "math-500"), "pass@1"),
    Benchmark("Minerva", ("minerva", "minerva_math"), "pass@1"),
    Benchmark("Olympiad", ("olympiad_bench", "olympiadbench", "olympiad"), "pass@1"),
)
_ALIAS = {a: b.name for b in BENCHMARKS for a in b.aliases}
BENCHMARK_ORDER = tuple(b.name for b in BENCHMARKS)


def benchmark_name(data_source: str) -> str:
    """The paper's name for a data_source (``olympiad_bench`` -> ``Olympiad``); unknown ones pass through."""
    return _ALIAS.get(data_source.strip().lower(), data_source)


@dataclass(kw_only=True)
class EvalConfig:
    temperature: float = 0.6  # sampling temperature of the evaluation (the paper: 0.6)
    max_tokens: int = 8192  # longest generated answer, in tokens
    seed: int = 0  # sampling seed (each row's seed derives from it)
    limit: int | None = None  # unique problems in all (first ones, file order)
    per_source_limit: int | None = None  # unique problems per benchmark
    max_repeats: int | None = None  # rows kept per problem (e.g. 4 of the 32 AIME repeats on a CPU)
    samples_per_row: int = 1  # >1: avg@k on a file that does not repeat its rows (each row k times)
    batch_size: int = 1024  # rows per generate_fn call

    def __post_init__(self):
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"EvalConfig.temperature must be in [0, 5], got {self.temperature}")
        for name in ("max_tokens", "batch_size", "samples_per_row"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        for name in ("limit", "per_source_limit", "max_repeats"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"EvalConfig.{name} must be None or an int >= 1, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"EvalConfig.seed must be an int >= 0, got {self.seed!r}")


def select_rows(dataset: RedDataset, cfg: EvalConfig) -> tuple[list[int], list[int]]:
    """(dataset indices to evaluate, problem id of each), applying the limits on unique problems.

    A problem is a (data_source, prompt token ids) pair; its rows keep file order.
    """
    problems: "OrderedDict[tuple, list[int]]" = OrderedDict()
    for i in range(len(dataset)):
        r = dataset.records[i]
        key = (benchmark_name(r.data_source), tuple(dataset.prompt_ids(i)))
        problems.setdefault(key, []).append(i)
    per_source: dict[str, int] = {}
    indices, problem_ids = [], []
    kept = 0
    for pid, (key, rows) in enumerate(problems.items()):
        if cfg.limit is not None and kept >= cfg.limit:
            break
        src = key[0]
        if cfg.per_source_limit is not None and per_source.get(src, 0) >= cfg.per_source_limit:
            continue
        per_source[src] = per_source.get(src, 0) + 1
        kept += 1
        for i in rows[:cfg.max_repeats]:
            indices += [i] * cfg.samples_per_row
            problem_ids += [pid] * cfg.samples_per_row
    return indices, problem_ids


@dataclass
class BenchmarkResult:
    name: str
    protocol: str  # as measured: "pass@1", "avg@32" (or "avg@2" on a subsample)
    paper_protocol: str  # what the paper uses for this benchmark ("-" when not one of the six)
    acc: float  # percent, mean over problems of the per-problem mean reward
    len: float  # mean response tokens over samples
    n_problems: int
    n_samples: int
    samples_per_problem: float
    truncated: int  # responses that hit max_tokens


@dataclass
class EvalResult:
    benchmarks: dict[str, BenchmarkResult]
    acc: float  # percent: the mean of the benchmark accuracies (the paper's "Avg.")
    len: float  # the mean of the benchmark LENs
    acc_micro: float  # percent over all samples
    len_micro: float
    reward_stats: dict[str, int]
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def evaluate(dataset: RedDataset, generate_fn: GenerateFn, scorer: Any, cfg: EvalConfig) -> EvalResult:
    """Generate one response per selected row, score it, and aggregate per benchmark."""
    t0 = time.monotonic()
    indices, problem_ids = select_rows(dataset, cfg)
    samples: list[dict[str, Any]] = []
    stats_total = None
    for lo in range(0, len(indices), cfg.batch_size):
        chunk = indices[lo:lo + cfg.batch_size]
        prompts = [dataset.prompt_ids(i) for i in chunk]
        outs = list(generate_fn(prompts, cfg.temperature, cfg.max_tokens, cfg.seed + lo))
        if len(outs) != len(chunk):
            raise RuntimeError(f"generate_fn returned {len(outs)} responses for {len(chunk)} prompts")
        texts = [str(o[1]) for o in outs]
        rewards, stats = scorer.score(texts, [dataset.records[i].gold for i in chunk])
        stats_total = stats if stats_total is None else stats_total.merge(stats)
        for j, (i, (tok, text), rew) in enumerate(zip(chunk, outs, rewards)):
            r = dataset.records[i]
            samples.append({"row": r.row, "data_source": r.data_source, "benchmark": benchmark_name(r.data_source),
                            "problem": problem_ids[lo + j], "gold": r.gold, "reward": float(rew),
                            "reason": stats.reasons[j], "length": len(tok),
                            "truncated": len(tok) >= cfg.max_tokens, "response": text})
    by_bench: "OrderedDict[str, list[dict]]" = OrderedDict()
    for s in samples:
        by_bench.setdefault(s["benchmark"], []).append(s)
    order = [b for b in BENCHMARK_ORDER if b in by_bench] + sorted(b for b in by_bench if b not in BENCHMARK_ORDER)
    protocols = {b.name: b.protocol for b in BENCHMARKS}
    results: dict[str, BenchmarkResult] = {}
    for name in order:
        rows = by_bench[name]
        per_problem: "OrderedDict[int, list[float]]" = OrderedDict()
        for s in rows:
            per_problem.setdefault(s["problem"], []).append(s["reward"])
        ks = {len(v) for v in per_problem.values()}
        measured = f"avg@{ks.pop()}" if len(ks) == 1 else f"avg@{min(ks)}-{max(ks)}"
        results[name] = BenchmarkResult(
            name=name, protocol="pass@1" if measured == "avg@1" else measured,
            paper_protocol=protocols.get(name, "-"),
            acc=100.0 * _mean([_mean(v) for v in per_problem.values()]),
            len=_mean([s["length"] for s in rows]), n_problems=len(per_problem), n_samples=len(rows),
            samples_per_problem=len(rows) / len(per_problem), truncated=sum(s["truncated"] for s in rows))
    return EvalResult(
        benchmarks=results,
        acc=_mean([b.acc for b in results.values()]), len=_mean([b.len for b in results.values()]),
        acc_micro=100.0 * _mean([s["reward"] for s in samples]), len_micro=_mean([s["length"] for s in samples]),
        reward_stats=stats_total.as_dict() if stats_total is not None else {},
        seconds=time.monotonic() - t0, samples=samples)
