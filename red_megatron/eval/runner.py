"""Glue between the protocol and a generation engine, shared by red-eval and the trainer.

``make_generate_fn`` adapts any object with the RolloutEngine ``generate`` signature (token ids
in, ``RolloutSample``s out) to the protocol's ``generate_fn``; it calls no vLLM API itself, so
the trainer can evaluate with the engine it already holds instead of building a second one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from red_megatron.eval.protocol import EvalConfig, EvalResult, GenerateFn, evaluate
from red_megatron.eval.report import load_records, markdown_table, protocol_note, result_record, write_result


def eval_data_config(cfg) -> "DataConfig":
    """How a run config reads its evaluation file (eval.data_path in eval.schema's layout): the prompt and
    key settings of ``data`` (the template, system turn, chat template and keys the policy is prompted
    with), no trace, no batching; rows without a data_source are named after the eval file. One definition
    for the in-training evaluation and red-eval."""
    from red_megatron.data.dataset import DataConfig

    d = cfg.data
    return DataConfig(path=cfg.eval.data_path, schema=cfg.eval.schema, prompt_key=d.prompt_key,
                      problem_key=d.problem_key, answer_key=d.answer_key, data_source_key=d.data_source_key,
                      prompt_template=d.prompt_template,
                      system_prompt=d.system_prompt, chat_template=d.chat_template, require_trace=False,
                      max_prompt_tokens=d.max_prompt_tokens, too_long_prompt=d.too_long_prompt, eos_token=d.eos_token,
                      answer_check="off", global_batch_size=1, shuffle=False)


def make_generate_fn(engine: Any, tokenizer: Any, *, top_p: float = 1.0,
                     stop_token_ids: Sequence[int] | None = None) -> GenerateFn:
    """``engine.generate(prompt_ids, n=1, temperature, top_p, max_tokens, seed)`` -> (token_ids, text) pairs.

    The engine derives a distinct seed for each prompt of a call from ``seed`` and the prompt's
    position, which is what the protocol needs for repeated rows to be independent samples.
    """
    stops = list(stop_token_ids or [])

    def generate_fn(prompts: list[list[int]], temperature: float, max_tokens: int, seed: int):
        outs = engine.generate(prompts, n=1, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                               seed=seed, stop_token_ids=stops)
        res = []
        for samples in outs:
            toks = list(samples[0].token_ids)
            res.append((toks, tokenizer.decode(toks, skip_special_tokens=True)))
        return res

    return generate_fn


def run_eval(*, name: str, dataset: Any, generate_fn: GenerateFn, scorer: Any, cfg: EvalConfig,
             out_dir: str | Path | None = None, meta: dict[str, Any] | None = None,
             include: Sequence[str | Path] = ()) -> tuple[EvalResult, str]:
    """Evaluate, write ``results.json``/``samples.jsonl``/``table.md`` under out_dir, return the table.

    ``include``: earlier results.json files whose rows go above this one (a Table 2 of presets).
    """
    result = evaluate(dataset, generate_fn, scorer, cfg)
    meta = {**(meta or {}), "eval_config": cfg.__dict__}
    records = load_records(list(include)) + [result_record(name, result, meta)]
    table = markdown_table(records)
    if out_dir is not None:
        write_result(out_dir, name, result, meta)
        (Path(out_dir) / "table.md").write_text(table + "\n" + protocol_note(records))
    return result, table
