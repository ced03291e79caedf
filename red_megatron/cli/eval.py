"""red-eval: evaluate an HF checkpoint with the paper's protocol; print a Table 2-shaped markdown table.

  red-eval --model runs/demo/run/hf --name RED --out runs/demo/eval
  red-eval --model DIR eval.protocol.per_source_limit=2 eval.protocol.max_repeats=2 eval.protocol.max_tokens=256
  red-eval --model DIR --recipe qwen25_math_1p5b rollout.tp_infer=2 rollout.executor=external_launcher
  red-eval --model DIR --config runs/x/run_config.json          # a run's own evaluation settings
  red-eval --table runs/*/eval/results.json                     # only the table

Every setting is a field of the run config (docs/CONFIG.md), given as for red-train: a recipe (--recipe),
a config file (--config), then ``section.field=value`` overrides. What it reads:
- ``eval.data_path`` (default: $RED_SHARED_DATA/math_eval.parquet, i.e. ../shared/data beside the clone,
  when neither a recipe nor a file names one) in ``eval.schema``'s layout ('openr1': data_source, prompt,
  reward_model.ground_truth; 'problem_answer' with ``data.problem_key`` / ``data.answer_key``), prompted as
  the run is: ``data.prompt_template``, ``data.system_prompt``, ``data.chat_template``,
  ``data.max_prompt_tokens``, ``data.too_long_prompt``;
- ``eval.protocol.*``: temperature (0.6), max_tokens, seed, limit, per_source_limit, max_repeats,
  samples_per_row, batch_size (AIME/AMC rows repeated 32 times in the file: avg@32);
- ``rollout.*``: the vLLM engine (dtype, tp_infer, gpu_memory_utilization, max_num_seqs, top_p, ...); its
  window is the longest selected prompt + eval.protocol.max_tokens, within rollout.max_model_len, and
  its seed eval.protocol.seed;
- ``reward.*``: the math-verify pool (num_workers, timeout_s, verify_fn).
Without --recipe and --config the config classes' own defaults apply. Writes results.json, samples.jsonl
and table.md under --out (default <model>/eval).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from red_megatron.cli.common import add_overrides, parser, shared_data_dir
from red_megatron.errors import UserError, run_cli

# red-eval's bounds when no recipe sets them, not sizes (the engine gets the longest prompt + max_tokens): a
# benchmark prompt under a small tokenizer (the tiny checkpoint's: 1,092 tokens for a MATH-500 row) is refused
# by data.max_prompt_tokens' default of 1024
_WINDOW_BOUND = 32768
_PROMPT_BOUND = 4096


def default_data() -> str:
    return str(shared_data_dir() / "math_eval.parquet")


def build_parser() -> argparse.ArgumentParser:
    ap = parser("red-eval", __doc__)
    ap.add_argument("--model", help="HF checkpoint directory (config.json, safetensors, tokenizer): model_dir")
    ap.add_argument("--recipe", default=None,
                    help="a recipe (configs/) or FILE.py[:function] whose eval, data, rollout and reward sections "
                         "apply (default: the config classes' defaults, or the --config file's recipe)")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="a YAML or JSON file of section.field values, as red-train's (a run_config.json too)")
    ap.add_argument("--name", default=None, help="the table row's name (default: the model dir's name)")
    ap.add_argument("--out", default=None, help="output directory for results.json, samples.jsonl, table.md")
    ap.add_argument("--table", nargs="+", metavar="RESULTS_JSON", help="only print a table of these results")
    ap.add_argument("--include", nargs="*", default=[], metavar="RESULTS_JSON",
                    help="earlier results.json files to show as rows above this model")
    ap.add_argument("--verbose", action="store_true",
                    help="show the libraries' log lines and warnings here (default: <out>/logs/library.log)")
    add_overrides(ap, "the evaluation's run config (eval.*, data.*, rollout.*, reward.*)")
    return ap


def base_config(model: str):
    """The run config red-eval starts from without a recipe or file: the classes' defaults, the shared
    benchmarks as eval.data_path, bounds on the prompt and the window large enough for any benchmark prompt
    and the protocol's 8k responses (a training run's micro-batch rule applies to every RunConfig), and 85%
    of a GPU for the engine (it is alone there, unlike a training run's)."""
    from red_megatron.config import EvalRunConfig, RunConfig
    from red_megatron.data.dataset import DataConfig
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.rollout.config import RolloutConfig

    data = default_data()
    return RunConfig(model_dir=model, data=DataConfig(path=data, max_prompt_tokens=_PROMPT_BOUND),
                     eval=EvalRunConfig(data_path=data),
                     rollout=RolloutConfig(max_model_len=_WINDOW_BOUND, gpu_memory_utilization=0.85),
                     policy=PolicyConfig(micro_batch_tokens=_WINDOW_BOUND))


def resolve_eval_config(model: str, recipe: str | None, config_file: str | None, overrides: list[str]):
    """The run config of an evaluation: recipe (or the defaults) -> config file -> overrides, validated once
    by the same code as red-train's (one override grammar, one set of refusals)."""
    from red_megatron.cli.common import resolve_run_config
    from red_megatron.overrides import apply_overrides

    overrides = [*overrides, f"model_dir={model}"]
    if recipe is None and config_file is None:
        return apply_overrides(base_config(model), overrides)
    cfg = resolve_run_config(recipe, config_file, overrides)
    if cfg.eval.data_path is None:
        cfg = apply_overrides(cfg, [f"eval.data_path={default_data()}"])
    return cfg


def _main(argv: list[str]) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
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
    cfg = resolve_eval_config(str(model), args.recipe, args.config, list(args.overrides))
    name = args.name or model.name
    out = Path(args.out) if args.out else model / "eval"
    from red_megatron.metrics import setup_run_logging

    lib_log = setup_run_logging(out, verbose=args.verbose)  # vLLM's and megatron's lines to <out>/logs/library.log
    from red_megatron.console import library_output_to_log

    with library_output_to_log(lib_log, enabled=not args.verbose):  # the engine's C++/tqdm output too
        return _evaluate(args, cfg, model, name, out, t0)


def _evaluate(args, cfg, model: Path, name: str, out: Path, t0: float) -> int:
    from red_megatron.data.chat import eos_token_id, load_tokenizer
    from red_megatron.data.dataset import RedDataset
    from red_megatron.eval import make_generate_fn, run_eval, select_rows
    from red_megatron.eval.runner import eval_data_config

    tok = load_tokenizer(model)
    ds = RedDataset.load(eval_data_config(cfg), tok)
    protocol = cfg.eval.protocol
    rows, _ = select_rows(ds, protocol)
    window = max(len(ds.prompt_ids(i)) for i in rows) + protocol.max_tokens
    r = cfg.rollout
    if window > r.max_model_len:
        raise UserError(f"window too long in rollout.max_model_len={r.max_model_len}: the longest selected prompt "
                        f"+ eval.protocol.max_tokens={protocol.max_tokens} is {window} tokens; expected at most "
                        f"rollout.max_model_len (raise it, or lower eval.protocol.max_tokens)")
    from red_megatron.reward import RewardScorer  # vLLM's import, after the data is found good
    from red_megatron.rollout.engine import RolloutEngine

    # the engine's seed is the evaluation's (each row's request seed derives from it as well)
    rcfg = dataclasses.replace(r, max_model_len=window, seed=protocol.seed,
                               executor="uni" if r.tp_infer == 1 else "external_launcher")
    engine = RolloutEngine(model, rcfg)
    scorer = RewardScorer(cfg.reward)
    try:
        gen = make_generate_fn(engine, tok, top_p=r.top_p, stop_token_ids=[eos_token_id(tok)])
        meta = {"model": str(model.resolve()), "data": str(Path(cfg.eval.data_path).resolve()), "top_p": r.top_p,
                "dtype": r.dtype, "rows": len(rows), "engine": "vllm",
                "device": "cuda" if engine.on_gpu else "cpu"}
        result, table = run_eval(name=name, dataset=ds, generate_fn=gen, scorer=scorer, cfg=protocol, out_dir=out,
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
