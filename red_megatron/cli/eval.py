"""red-eval: evaluate an HF checkpoint with the paper's protocol; print a Table 2-shaped markdown table.

  red-eval --model runs/demo/hf --name RED --out runs/demo/eval
  red-eval --model DIR --per-source-limit 2 --max-repeats 2 --max-tokens 256     # a CPU taste
  red-eval --model DIR protocol.temperature=0.6 engine.tp=2                      # options as overrides
  red-eval --table runs/*/eval/results.json                                      # only the table

Reads $RED_SHARED_DATA/math_eval.parquet by default (default ../shared/data beside the clone;
data_source, prompt, reward_model.ground_truth; AIME/AMC rows repeated 32 times: avg@32) or any
parquet/JSONL with a problem and an answer field (``--schema problem_answer --problem-key question
--answer-key answer``). Generation runs on the vLLM rollout engine (red_megatron.rollout) at T=0.6,
one sample per row; rewards through the math-verify pool. Writes results.json, samples.jsonl and
table.md under --out. Every option of the groups data, protocol and engine can also be given as
``section.option=value`` (e.g. ``data.max_prompt_tokens=2048``).
"""
from __future__ import annotations

import time
from pathlib import Path

from red_megatron.cli.common import apply_namespace_overrides, parser, shared_data_dir
from red_megatron.errors import run_cli

SECTIONS = ("data", "protocol", "engine")


def default_data() -> str:
    return str(shared_data_dir() / "math_eval.parquet")


def build_parser() -> argparse.ArgumentParser:
    ap = parser("red-eval", __doc__)
    ap.add_argument("--model", help="HF checkpoint directory (config.json, safetensors, tokenizer)")
    ap.add_argument("--name", default=None, help="the table row's name (default: the model dir's name)")
    ap.add_argument("--out", default=None, help="output directory for results.json, samples.jsonl, table.md")
    ap.add_argument("--table", nargs="+", metavar="RESULTS_JSON", help="only print a table of these results")
    ap.add_argument("--include", nargs="*", default=[], metavar="RESULTS_JSON",
                    help="earlier results.json files to show as rows above this model")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default=default_data(), help="default: $RED_SHARED_DATA/math_eval.parquet")
    g.add_argument("--schema", choices=("openr1", "problem_answer"), default="openr1")
    g.add_argument("--problem-key", default="problem")
    g.add_argument("--answer-key", default=None, help="default: reward_model.ground_truth / answer")
    g.add_argument("--prompt-key", default="prompt")
    g.add_argument("--data-source-key", default="data_source")
    g.add_argument("--prompt-template", default="{problem}", help="problem_answer: the user turn")
    g.add_argument("--system-prompt", default=None)
    g.add_argument("--max-prompt-tokens", type=int, default=4096)
    g.add_argument("--too-long-prompt", choices=("error", "drop"), default="error")
    g = ap.add_argument_group("protocol")
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-tokens", type=int, default=8192, help="response limit")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--limit", type=int, default=None, help="unique problems in all")
    g.add_argument("--per-source-limit", type=int, default=None, help="unique problems per benchmark")
    g.add_argument("--max-repeats", type=int, default=None, help="rows kept per problem (of the 32 AIME/AMC repeats)")
    g.add_argument("--samples-per-row", type=int, default=1,
                   help="k samples of every row: avg@k for files that do not repeat their rows")
    g.add_argument("--batch-size", type=int, default=1024, help="rows per engine call")
    g = ap.add_argument_group("engine")
    g.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    g.add_argument("--tp", type=int, default=1, help="vLLM tensor parallelism")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--reward-workers", type=int, default=4)
    g.add_argument("--reward-timeout", type=float, default=10.0)
    ap.add_argument("--verbose", action="store_true",
                    help="show the libraries' log lines and warnings here (default: <out>/logs/library.log)")
    ap.add_argument("overrides", nargs="*", metavar="section.option=value",
                    help=f"options of the groups {', '.join(SECTIONS)} as overrides, e.g. protocol.temperature=0.6")
    return ap


def _main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    args = apply_namespace_overrides(ap, args, args.overrides, SECTIONS)
    from red_megatron.eval import load_records, markdown_table, protocol_note

    if args.table:
        records = load_records(args.table)
        print(markdown_table(records) + "\n" + protocol_note(records))
        return 0
    if not args.model:
        ap.error("--model is required (or --table to only print a table)")

    from red_megatron.cli.checks import check_model_dir

    t0 = time.perf_counter()
    model = Path(args.model)
    check_model_dir(model, field="--model")
    name = args.name or model.name
    out = Path(args.out) if args.out else model / "eval"
    from red_megatron.metrics import setup_run_logging

    lib_log = setup_run_logging(out, verbose=args.verbose)  # vLLM's and megatron's lines to <out>/logs/library.log
    from red_megatron.console import library_output_to_log

    with library_output_to_log(lib_log, enabled=not args.verbose):  # the engine's C++/tqdm output too
        return _evaluate(args, model, name, out, t0)


def _evaluate(args, model: Path, name: str, out: Path, t0: float) -> int:
    from red_megatron.data.chat import eos_token_id, load_tokenizer
    from red_megatron.data.dataset import DataConfig, RedDataset
    from red_megatron.eval import EvalConfig, make_generate_fn, run_eval, select_rows

    tok = load_tokenizer(model)
    dcfg = DataConfig(path=args.data, schema=args.schema, prompt_key=args.prompt_key, problem_key=args.problem_key,
                      answer_key=args.answer_key, data_source_key=args.data_source_key,
                      prompt_template=args.prompt_template, system_prompt=args.system_prompt,
                      require_trace=False, max_prompt_tokens=args.max_prompt_tokens,
                      too_long_prompt=args.too_long_prompt, answer_check="off", global_batch_size=1,
                      shuffle=False)
    ds = RedDataset.load(dcfg, tok)
    ecfg = EvalConfig(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed, limit=args.limit,
                      per_source_limit=args.per_source_limit, max_repeats=args.max_repeats,
                      samples_per_row=args.samples_per_row, batch_size=args.batch_size)
    rows, _ = select_rows(ds, ecfg)
    longest = max(len(ds.prompt_ids(i)) for i in rows)
    from red_megatron.reward import RewardConfig, RewardScorer  # vLLM's import, after the data is found good
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    rcfg = RolloutConfig(max_model_len=longest + args.max_tokens, dtype=args.dtype, tp_infer=args.tp,
                         executor="uni" if args.tp == 1 else "external_launcher", seed=args.seed,
                         gpu_memory_utilization=args.gpu_memory_utilization, max_num_seqs=args.max_num_seqs)
    engine = RolloutEngine(model, rcfg)
    scorer = RewardScorer(RewardConfig(num_workers=args.reward_workers, timeout_s=args.reward_timeout))
    try:
        gen = make_generate_fn(engine, tok, top_p=args.top_p, stop_token_ids=[eos_token_id(tok)])
        meta = {"model": str(model.resolve()), "data": str(Path(args.data).resolve()), "top_p": args.top_p,
                "dtype": args.dtype, "rows": len(rows), "engine": "vllm",
                "device": "cuda" if engine.on_gpu else "cpu"}
        result, table = run_eval(name=name, dataset=ds, generate_fn=gen, scorer=scorer, cfg=ecfg, out_dir=out,
                                 meta=meta, include=args.include)
    finally:
        scorer.close()
        engine.close()
    print(table)
    print(f"[eval] {name}: {len(rows)} samples, Avg. {result.acc:.2f}, LEN {result.len:.0f}, reward "
          f"{result.reward_stats} -> {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # the reward pool's workers start with forkserver/spawn
    import sys

    sys.exit(main())
