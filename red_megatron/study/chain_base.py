"""The chain base's gate (STUDY_DESIGN §6.4): does the warm-up base have *partial* ability?

On ``chain_val`` (32 problems a k, never in any report):
- easy (k <= 3) greedy accuracy >= 85 %;
- k = 4 pass@1 at T=1 in [30, 85] %;
- k >= 6 pass@32 at T=1 <= 3 % (pooled over the hard problems).
The pass@k numbers use the unbiased estimator 1 - C(n-c, k) / C(n, k) from n samples a problem (with
n < 32, as in a smoke test, pass@n is reported and named so). ``gate_report`` is pure (tests feed it
samples); ``run_gate`` generates the samples with the project's vLLM engine and scores them with its
math-verify pool, writing ``gate.json`` and ``gate.md``. The base is built by scripts/build_chain_base.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

EASY_GREEDY_MIN = 85.0
K4_PASS1 = (30.0, 85.0)
HARD_PASSK_MAX, HARD_K_MIN, HARD_PASSK = 3.0, 6, 32


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right (Chen et al. 2021); k <= n."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _per_problem(samples: Iterable[dict], k_of_row: dict[int, int]) -> dict[int, dict[int, list]]:
    """{k: {row: [samples]}}."""
    out: dict[int, dict[int, list]] = {}
    for s in samples:
        row = int(s["row"])
        if row not in k_of_row:
            raise ValueError(f"gate: sample of row {row} has no k (rows known: {len(k_of_row)})")
        out.setdefault(k_of_row[row], {}).setdefault(row, []).append(s)
    return out


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def gate_report(greedy: list[dict], sampled: list[dict], k_of_row: dict[int, int], meta: dict | None = None) -> dict:
    """The gate from eval samples (dicts with row, reward, length, truncated): per-k table, checks, verdict."""
    g, s = _per_problem(greedy, k_of_row), _per_problem(sampled, k_of_row)
    ns = {len(v) for rows in s.values() for v in rows.values()}
    if len(ns) != 1:
        raise ValueError(f"gate: every problem needs the same number of T=1 samples, got counts {sorted(ns)}")
    n = ns.pop()
    kk = [k for k in (1, 2, 4, 8, 16, 32) if k <= n]
    per_k = {}
    for k in sorted(set(g) | set(s)):
        rows_s = s.get(k, {})
        right = {r: sum(x["reward"] > 0.5 for x in v) for r, v in rows_s.items()}
        per_k[k] = {
            "problems": len(rows_s) or len(g.get(k, {})),
            "greedy": 100 * _mean(x["reward"] for v in g.get(k, {}).values() for x in v),
            **{f"pass@{j}": 100 * _mean(pass_at_k(n, c, j) for c in right.values()) for j in kk},
            "len": _mean(x["length"] for v in rows_s.values() for x in v),
            "trunc": 100 * _mean(bool(x["truncated"]) for v in rows_s.values() for x in v),
        }
    hk = min(HARD_PASSK, n)

    def pooled(ks, fn, src):
        vals = [fn(v) for k in ks for v in src.get(k, {}).values()]
        return 100 * _mean(vals), len(vals)

    easy, n_easy = pooled([k for k in per_k if k <= 3], lambda v: _mean(x["reward"] for x in v), g)
    k4, n_k4 = pooled([4], lambda v: _mean(x["reward"] > 0.5 for x in v), s)
    hard, n_hard = pooled([k for k in per_k if k >= HARD_K_MIN],
                          lambda v: pass_at_k(n, sum(x["reward"] > 0.5 for x in v), hk), s)
    checks = [
        {"name": "easy (k<=3) greedy", "value": easy, "problems": n_easy, "rule": f">= {EASY_GREEDY_MIN:g} %",
         "passed": n_easy > 0 and easy >= EASY_GREEDY_MIN},
        {"name": "k=4 pass@1 (T=1)", "value": k4, "problems": n_k4, "rule": f"in [{K4_PASS1[0]:g}, {K4_PASS1[1]:g}] %",
         "passed": n_k4 > 0 and K4_PASS1[0] <= k4 <= K4_PASS1[1]},
        {"name": f"k>={HARD_K_MIN} pass@{hk} (T=1)", "value": hard, "problems": n_hard,
         "rule": f"<= {HARD_PASSK_MAX:g} %" + ("" if hk == HARD_PASSK else f" (design: pass@{HARD_PASSK}; only {n} samples)"),
         "passed": n_hard > 0 and hard <= HARD_PASSK_MAX},
    ]
    return {"passed": all(c["passed"] for c in checks) and hk == HARD_PASSK, "checks": checks,
            "samples_per_problem": n, "per_k": {str(k): v for k, v in per_k.items()}, "meta": meta or {}}


def _f(x, fmt=".1f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render_gate_md(rep: dict, title: str = "Chain base gate (STUDY_DESIGN §6.4)") -> str:
    m = rep.get("meta", {})
    lines = [f"# {title}", ""]
    if m:
        lines += [f"- {k}: {v}" for k, v in m.items()] + [""]
    verdict = "PASSED" if rep["passed"] else "FAILED"
    if not rep["passed"] and rep["samples_per_problem"] < HARD_PASSK:
        verdict += f" (only {rep['samples_per_problem']} T=1 samples a problem: the gate needs {HARD_PASSK})"
    lines += [f"**Gate: {verdict}**", "", "| check | value (%) | problems | rule | passed |", "|---|---:|---:|---|---|"]
    lines += [f"| {c['name']} | {_f(c['value'])} | {c['problems']} | {c['rule']} | {'yes' if c['passed'] else 'no'} |"
              for c in rep["checks"]]
    per_k = rep["per_k"]
    cols = [c for c in next(iter(per_k.values()), {}) if c.startswith("pass@")]
    lines += ["", f"Per k on chain_val (greedy: T=0, one sample; pass@k: T=1, unbiased from "
                  f"n={rep['samples_per_problem']}; LEN and trunc: over the T=1 samples):", "",
              "| k | problems | greedy % | " + " | ".join(f"{c} %" for c in cols) + " | LEN | trunc % |",
              "|---:|---:|---:|" + "---:|" * len(cols) + "---:|---:|"]
    for k, v in per_k.items():
        lines.append(f"| {k} | {v['problems']} | {_f(v['greedy'])} | " + " | ".join(_f(v[c]) for c in cols)
                     + f" | {_f(v['len'])} | {_f(v['trunc'])} |")
    return "\n".join(lines) + "\n"


def write_gate(rep: dict, out_dir) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.md").write_text(render_gate_md(rep))
    tmp = out / "gate.json.tmp"
    tmp.write_text(json.dumps(rep, indent=1, default=str) + "\n")
    tmp.replace(out / "gate.json")  # last: its presence means the gate was checked
    return out / "gate.json", out / "gate.md"


def val_k_of_row(val_path) -> dict[int, int]:
    """{row: k} of a chain parquet (extra_info.k)."""
    from red_megatron.data.records import iter_rows

    out = {}
    for row, _, rec in iter_rows(val_path):
        info = rec.get("extra_info") or {}
        if "k" not in info:
            raise ValueError(f"{Path(val_path).name} row {row}: extra_info has no 'k' (not a chain split?)")
        out[row] = int(info["k"])
    return out


def run_gate(model_dir, val_path, *, samples: int = HARD_PASSK, max_tokens: int = 224, max_prompt_tokens: int = 32,
             per_k_limit: int | None = None, seed: int = 0, meta: dict | None = None) -> dict[str, Any]:
    """Greedy and T=1 × ``samples`` generations of ``model_dir`` on the chain val split, then ``gate_report``.

    ``per_k_limit`` keeps only the first N problems of each k (a smoke test)."""
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    from red_megatron.data.chat import eos_token_id, load_tokenizer
    from red_megatron.data.dataset import DataConfig, RedDataset
    from red_megatron.eval import EvalConfig, make_generate_fn
    from red_megatron.eval.protocol import evaluate
    from red_megatron.reward import RewardConfig, RewardScorer
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    t0 = time.perf_counter()
    data_path = Path(val_path)
    if per_k_limit is not None:  # a subset file keeps row numbers consistent with its own extra_info
        table = pq.read_table(data_path)
        ks = [r["k"] for r in table.column("extra_info").to_pylist()]
        seen: dict[int, int] = {}
        keep = [i for i, k in enumerate(ks) if seen.__setitem__(k, seen.get(k, 0) + 1) or seen[k] <= per_k_limit]
        data_path = Path(model_dir).parent / f"gate_val_subset_{per_k_limit}.parquet"
        pq.write_table(table.take(pa.array(keep)), data_path)
    k_of_row = val_k_of_row(data_path)
    tok = load_tokenizer(model_dir)
    ds = RedDataset.load(DataConfig(path=str(data_path), require_trace=False, max_prompt_tokens=max_prompt_tokens,
                                    answer_check="off", global_batch_size=1, shuffle=False), tok)
    # vLLM's CPU scheduler chunks prefills beyond 4096 tokens a step, and a seeded T>0 request whose prefill
    # was chunked crashes it ("CPU Generator does not use offset"): keep max_num_seqs × prompt <= 4096.
    seqs = max(1, min(256, 4096 // max_prompt_tokens))
    engine = RolloutEngine(model_dir, RolloutConfig(max_model_len=max_prompt_tokens + max_tokens, dtype="float32",
                                                    seed=seed, max_num_seqs=seqs, cpu_kvcache_space_gib=1.0))
    scorer = RewardScorer(RewardConfig(num_workers=1))
    try:
        gen = make_generate_fn(engine, tok, stop_token_ids=[eos_token_id(tok)])
        greedy = evaluate(ds, gen, scorer, EvalConfig(temperature=0.0, max_tokens=max_tokens, seed=seed)).samples
        sampled = evaluate(ds, gen, scorer, EvalConfig(temperature=1.0, max_tokens=max_tokens, seed=seed + 1,
                                                       samples_per_row=samples)).samples
    finally:
        scorer.close()
        engine.close()
    meta = {**(meta or {}), "model": str(model_dir), "val": str(data_path), "samples_T1": samples,
            "max_tokens": max_tokens, "gate_seconds": round(time.perf_counter() - t0, 1)}
    return gate_report(greedy, sampled, k_of_row, meta)
