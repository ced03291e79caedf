"""RED step throughput per stage, across model shapes, on one GPU: the trainer's own policy code.

For each Qwen2.5 shape (random weights, bf16, TP=1/PP=1: what fits one GPU), one synthetic RED
batch (--prompts × (--group − 1 online samples + 1 offline trace), random response lengths up to
--response, red token terms from red_megatron.algo) goes through the policy-side stages of a RED
step exactly as red_megatron/trainer.py calls them (MegatronPolicy):

  old_logprob  policy.logprobs_and_entropy   no-grad forward: per-token log-probs + entropies
  update       policy.train_step             forward + backward (fused RED loss) + optimizer step
  refit_stream policy.stream_hf_weights      the refit's gather of full HF tensors (no engine)

Reported per stage: seconds (median of --repeats after one warm-up, CUDA-synchronised),
tokens/s (computed tokens: prompts + responses), MFU against --peak-flops (forward 2·P + 2·L·h·T
per token, forward+backward three times that, as in policy_throughput.py and GPU.md), and peak
memory (torch.cuda.max_memory_allocated during the stage). A shape whose weights + fp32 grads +
Adam state would not fit the GPU (--state-budget-gib) is reported as such, with the bytes, and
skipped, or, with --fallback-stages old_logprob,refit_stream, measured without the update (7B on
one H200: 128 GiB of update state, but weights + grad buffer + fp32 master copy fit).
Rollout generation is not here: vLLM cannot be installed on the GPU machine.

  python3 benchmarks/step_throughput.py --out $OUT                           # GPU: 0.5b,1.5b,3b,7b
  python3 benchmarks/step_throughput.py --shapes smoke --prompts 2 --group 2 --response 16 --out /tmp   # CPU
Writes step_throughput.json under --out and prints a markdown table.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import SHAPES, hf_config_dict, num_params, rows_beside, run_meta, sync, wall_times  # noqa: E402

GiB = 1 << 30
n_params = num_params  # the one parameter counter: red_megatron.hf.config.HFModelConfig.num_params
STAGES = ("old_logprob", "update", "refit_stream")
STATE_BYTES_PER_PARAM = 2 + 4 + 4 + 8  # bf16 weight, fp32 main grad, fp32 master, Adam m + v (one GPU: no sharding)


def synthetic_batch(cfg: dict, prompts: int, group: int, response: int, prompt_len: int, seed: int):
    """Token rows, prompt lengths and the red preset's token terms for one RED batch."""
    from red_megatron.algo import AlgoConfig, build_objective

    g = torch.Generator().manual_seed(seed)
    V = cfg["vocab_size"]
    tokens, prompt_lens, resp_lens, rewards, gid, off = [], [], [], [], [], []
    for p in range(prompts):
        prompt = torch.randint(0, V, (prompt_len,), generator=g)
        for s in range(group):
            r = int(torch.randint(max(1, response // 4), response + 1, (1,), generator=g))
            tokens.append(torch.cat([prompt, torch.randint(0, V, (r,), generator=g)]))
            prompt_lens.append(prompt_len)
            resp_lens.append(r)
            is_trace = s == group - 1
            rewards.append(1.0 if is_trace else float(torch.rand((), generator=g) < 0.3))
            gid.append(p)
            off.append(is_trace)
    obj = build_objective(AlgoConfig(preset="red", num_online=group - 1))
    terms, _, _ = obj.token_terms(torch.tensor(rewards), torch.tensor(gid), torch.tensor(off),
                                  torch.tensor(resp_lens), w=1.5)
    return tokens, prompt_lens, terms


def _stage(fn, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ``fn`` and the peak memory (GiB) while it ran."""
    fn()  # warm-up
    sync()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    secs = wall_times(fn, repeats, warmup=0)
    peak = torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else None
    return statistics.median(secs), peak


def run_shape(shape: str, args) -> dict:
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.model import build_model
    from red_megatron.policy.parallel import current as parallel_current
    from red_megatron.policy.policy import MegatronPolicy

    cfg = hf_config_dict(shape)
    P = num_params(cfg)
    rec = {"shape": shape, "params": P, "state_GiB": P * STATE_BYTES_PER_PARAM / GiB}
    stages = STAGES
    budget = (args.state_budget_gib * GiB if args.state_budget_gib is not None else
              0.9 * torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None)
    if budget is not None and P * STATE_BYTES_PER_PARAM > budget:
        why = (f"weights + fp32 grads + Adam state need {rec['state_GiB']:.4g} GiB at TP=1, over the "
               f"{budget / GiB:.4g} GiB budget: needs TP/PP > 1 (several GPUs)")
        if not args.fallback_stages:
            rec["skipped"] = why
            return rec
        stages = tuple(args.fallback_stages.split(","))  # e.g. the no-grad pass and the refit gather still fit
        rec["skipped_stages"] = {st: why for st in STAGES if st not in stages}
    on_gpu = torch.cuda.is_available()
    pcfg = PolicyConfig(dtype="bfloat16" if on_gpu else "float32", micro_batch_tokens=args.micro_batch_tokens,
                        lr=1e-6, lr_decay_steps=100, loss_impl="auto")
    chunks = build_model(cfg, groups=parallel_current(), dtype=torch.bfloat16 if on_gpu else torch.float32)
    policy = MegatronPolicy(chunks, pcfg, groups=parallel_current(), vocab_size=cfg["vocab_size"])
    tokens, prompt_lens, terms = synthetic_batch(cfg, args.prompts, args.group, args.response, args.prompt_len,
                                                 args.seed)
    n_tok = sum(len(t) for t in tokens)
    mean_len = n_tok / len(tokens)
    fwd_flops = n_tok * (2 * P + 2 * cfg["num_hidden_layers"] * cfg["hidden_size"] * mean_len)
    logp_old = [None]
    batch = policy.step_batch(tokens, prompt_lens)  # as the trainer: planned once, used by both passes

    def old():
        logp_old[0], _ = policy.logprobs_and_entropy(batch)

    def update():
        policy.train_step(batch, terms=terms, logp_old_N=logp_old[0])

    def stream():
        for _ in policy.stream_hf_weights():
            pass

    rec.update(tokens=n_tok, sequences=len(tokens))
    for name, fn, flops in (("old_logprob", old, fwd_flops), ("update", update, 3 * fwd_flops),
                            ("refit_stream", stream, None)):
        if name not in stages:
            continue
        s, peak = _stage(fn, args.repeats)
        rec[name] = {"seconds": s, "tokens_per_s": n_tok / s if flops else None,
                     "mfu": flops / s / args.peak_flops if flops and on_gpu else None, "peak_GiB": peak}
        print(shape, name, json.dumps(rec[name]), flush=True)
    del policy, chunks
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return rec


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="0.5b,1.5b,3b,7b")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8, help="samples per prompt: G online + 1 trace")
    ap.add_argument("--response", type=int, default=2048, help="longest response (lengths drawn in [1/4, 1]×)")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--micro-batch-tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-flops", type=float, default=989e12, help="dense bf16 peak (H100 SXM datasheet)")
    ap.add_argument("--state-budget-gib", type=float, default=None,
                    help="bytes the update's state may take (default on a GPU: 0.9 of its memory; none on the CPU)")
    ap.add_argument("--fallback-stages", default="",
                    help="stages still run for a shape over that budget (e.g. old_logprob,refit_stream); default: skip it")
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)
    bad = [st for st in args.fallback_stages.split(",") if st and st not in STAGES]
    if bad or "update" in args.fallback_stages.split(","):
        ap.error(f"--fallback-stages: expected some of old_logprob,refit_stream, got {args.fallback_stages!r}")
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        ap.error(f"--shapes: unknown {unknown}; valid: {', '.join(SHAPES)}")
    if args.group < 2:
        ap.error(f"--group must be >= 2 (at least one online sample and the trace), got {args.group}")

    from red_megatron.policy.parallel import init_model_parallel

    init_model_parallel(tp=1, pp=1, seed=args.seed)
    meta = run_meta(args=vars(args))
    res = {"meta": meta, "shapes": []}
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "step_throughput.json")
    for shape in args.shapes.split(","):
        try:
            rec = run_shape(shape, args)
        except Exception as e:  # noqa: BLE001 - one shape's failure (e.g. out of memory) is a row, not the end
            traceback.print_exc()
            rec = {"shape": shape, "error": f"{type(e).__name__}: {e}"[:400]}
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        res["shapes"].append(rec)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
        rows_beside(path, [dict(shape=shape, stage=st, params=rec.get("params"), tokens=rec.get("tokens"), **rec[st])
                           for st in STAGES if isinstance(rec.get(st), dict)], meta, config=vars(args))
    print(f"\n{meta['device']}: {args.prompts} prompts × {args.group} samples, responses ≤ {args.response}, "
          f"prompt {args.prompt_len} tokens\n| shape | params | tokens | stage | s | tokens/s | MFU | peak GiB |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in res["shapes"]:
        if "skipped" in r or "error" in r:
            print(f"| {r['shape']} | | | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        for st in STAGES:
            if st not in r:
                print(f"| {r['shape']} | {r['params'] / 1e9:.2f}B | {r['tokens']:,} | {st} | skipped | | | |")
                continue
            x = r[st]
            tps = "–" if x["tokens_per_s"] is None else f"{x['tokens_per_s']:,.0f}"
            mfu = "–" if x["mfu"] is None else f"{100 * x['mfu']:.0f}%"
            pk = "–" if x["peak_GiB"] is None else f"{x['peak_GiB']:.1f}"
            print(f"| {r['shape']} | {r['params'] / 1e9:.2f}B | {r['tokens']:,} | {st} | {x['seconds']:.3f} | {tps} | "
                  f"{mfu} | {pk} |")
    return res


if __name__ == "__main__":
    main()
