"""Benchmark evaluation with the paper's protocol (avg@32 / pass@1 at T=0.6, Acc and LEN).

``evaluate(dataset, generate_fn, scorer, EvalConfig(...))`` is engine-free: the caller
injects generation (scripts/eval.py builds it on the vLLM rollout engine).
"""
from red_megatron.eval.protocol import (
    BENCHMARK_ORDER, BENCHMARKS, BenchmarkResult, EvalConfig, EvalResult, benchmark_name, evaluate, select_rows,
)
from red_megatron.eval.report import load_records, markdown_table, protocol_note, result_record, write_result
from red_megatron.eval.runner import make_generate_fn, run_eval

__all__ = ["BENCHMARKS", "BENCHMARK_ORDER", "BenchmarkResult", "EvalConfig", "EvalResult", "benchmark_name",
           "evaluate", "load_records", "make_generate_fn", "run_eval", "markdown_table", "protocol_note", "result_record", "select_rows",
           "write_result"]
