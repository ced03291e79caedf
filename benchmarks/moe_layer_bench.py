"""Mixture-of-experts layers, forward + backward: Megatron-Core (this repo's model) vs transformers' Qwen3-MoE.

A Qwen3-30B-A3B decoder cut to ``--layers`` layers (every one routed: 128 experts of 768, top-8, attention
32 heads of 128 with 4 KV heads) and a small vocabulary, so that the time and memory are the layers' (the
LM head and loss at V=151,936 are lm_head_bench.py's and policy_throughput.py's). One process, one GPU,
EP=1, bf16, random weights, cross entropy over every token, no optimizer step (policy_throughput.py's
protocol). Implementations:

  mcore  red_megatron.policy.model.build_model: megatron-core MoELayer (TopKRouter in fp32, SequentialMLP
         experts: the project's build, no grouped GEMM) with the project's SDPA attention, the RL defaults
         (no auxiliary loss); the token dispatcher the trainer would use (alltoall on a GPU)
  hf     transformers' Qwen3MoeForCausalLM (Qwen3MoeSparseMoeBlock, its default experts implementation,
         recorded), attn_implementation="sdpa"

Per run: milliseconds (median of --steps after --warmup; CUDA events), tokens/s, peak memory
(torch.cuda.max_memory_allocated, the weights included) and the weights' own memory, the active parameters
a token uses (router + its top-k experts + attention) and TFLOP/s on them (6·active + 6·h·T a token and
layer), and how many expert weight tensors the backward reached. Megatron-vs-transformers parity of these
layers is tests/test_policy_moe.py's (CPU, fp32). The JSON is rewritten after every run;
``projection_moe.py --moe-json`` calibrates on it.

    python benchmarks/moe_layer_bench.py --json OUT.json [--layers 2] [--layouts 1x4096] [--impls mcore,hf]
    python benchmarks/moe_layer_bench.py --json OUT.json --smoke      # CPU, tiny shape, every code path
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import bench_device, bench_dtype, build_hf_model, free, run_meta, step_times_ms  # noqa: E402  (sys.path, TRITON_INTERPRET)

GiB = 1024 ** 3
IMPLS = ("mcore", "hf")
# Qwen3-30B-A3B's config.json numbers (Hugging Face hub; tests/hf_shapes.py has the whole file) and a tiny
# CPU stand-in (head_dim 32 as the tests' tiny MoE)
MOE_SHAPES = {
    "30b-a3b": dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                    num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144, num_hidden_layers=48),
    "smoke": dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=4,
                  num_experts_per_tok=2, moe_intermediate_size=64, intermediate_size=256, num_hidden_layers=2),
}


def moe_config_dict(shape: str, layers: int | None = None, vocab: int = 1024) -> dict:
    """MOE_SHAPES[shape] as a Qwen3-MoE config.json dict, ``layers`` deep, every layer routed."""
    if shape not in MOE_SHAPES:
        raise ValueError(f"unknown MoE shape {shape!r}; valid: {', '.join(MOE_SHAPES)}")
    s = dict(MOE_SHAPES[shape])
    s["num_hidden_layers"] = layers or s["num_hidden_layers"]
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_act": "silu",
            "rms_norm_eps": 1e-6, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "router_aux_loss_coef": 0.0, "output_router_logits": False, "vocab_size": vocab,
            "max_position_embeddings": 40960, "rope_theta": 1e6, "tie_word_embeddings": False,
            "attention_bias": False, "use_sliding_window": False, "attention_dropout": 0.0,
            "initializer_range": 0.02, **s}


def layer_counts(cfg: dict, seq: int) -> dict:
    """Parameters of the decoder layers (total, and active a token) and their training FLOPs a token."""
    from red_megatron.hf.config import read_hf_config

    hf = read_hf_config(cfg)
    outside = hf.vocab_size * hf.hidden_size * (1 if hf.tie_word_embeddings else 2) + hf.hidden_size
    total, active = hf.num_params() - outside, hf.num_active_params() - outside
    return {"layer_params": total, "layer_active_params": active,
            "flops_per_token": 6.0 * active + 6.0 * hf.num_layers * hf.hidden_size * seq}


_device, _dtype = bench_device, bench_dtype


def build(impl: str, cfg: dict):
    """(model, step function of tokens) for one implementation."""
    if impl == "mcore":
        from red_megatron.policy.model import ModelOptions, build_model
        from red_megatron.policy.moe import MoEOptions
        from red_megatron.policy.parallel import current

        model = build_model(cfg, groups=current(), dtype=_dtype(), options=ModelOptions(attention="sdpa"),
                            moe=MoEOptions())[0]

        def step(tokens, labels):
            pos = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
            logits = model(tokens, pos, attention_mask=None)[..., :cfg["vocab_size"]]
            torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten()).backward()
        return model, step, "SequentialMLP"
    if impl != "hf":
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    model = build_hf_model(Qwen3MoeConfig, Qwen3MoeForCausalLM, cfg)
    c = model.config

    def step(tokens, labels):
        model(input_ids=tokens, labels=labels).loss.backward()
    return model, step, str(getattr(c, "_experts_implementation", None) or "default")


def run_one(impl: str, cfg: dict, B: int, S: int, steps: int, warmup: int) -> dict:
    rec = {"impl": impl, "layers": cfg["num_hidden_layers"], "batch": B, "seq": S, "tokens": B * S,
           **layer_counts(cfg, S)}
    free()
    model = None
    try:
        torch.manual_seed(0)
        model, step, experts = build(impl, cfg)
        rec["experts_impl"] = experts
        tokens = torch.randint(0, cfg["vocab_size"], (B, S), device=_device())
        labels = torch.roll(tokens, -1, dims=1)

        def call():
            for p in model.parameters():
                p.grad = None
            step(tokens, labels)
        rec["model_gib"] = torch.cuda.memory_allocated() / GiB if torch.cuda.is_available() else None
        times = step_times_ms(call, steps, warmup)
        ms = statistics.median(times)
        tps = B * S / (ms / 1e3)
        rec.update(ms=ms, ms_min=min(times), tokens_per_s=tps, tflops_active=tps * rec["flops_per_token"] / 1e12,
                   peak_gib=torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else None)
        # the backward reached the experts (a dispatch that dropped every token would time nothing)
        experts = [p for n, p in model.named_parameters() if "experts" in n]
        rec["expert_tensors_with_grad"] = sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in experts)
        rec["expert_tensors"] = len(experts)
    except torch.cuda.OutOfMemoryError as e:
        rec["error"] = "OOM: " + str(e).split("\n")[0][:160]
    except Exception as e:  # noqa: BLE001 - record it and measure the rest
        rec["error"] = f"{type(e).__name__}: {e}"[:400]
        traceback.print_exc()
    finally:
        del model
        free()
    return rec


def _fmt(r: dict) -> str:
    lay = f"{r['batch']}×{r['seq']:,}"
    if "error" in r:
        return f"| {r['impl']} | {r['layers']} | {lay} | {r['error'][:60]} | | | |"
    pk = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
    return f"| {r['impl']} | {r['layers']} | {lay} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | " \
           f"{r['tflops_active']:.1f} | {pk} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="write the results here (rewritten after every run)")
    ap.add_argument("--shape", default="30b-a3b", choices=list(MOE_SHAPES))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--layouts", default="1x4096", help="comma-separated BxS (micro-batch x sequence length)")
    ap.add_argument("--impls", default="mcore,hf", help=f"comma-separated, of {','.join(IMPLS)}")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shape, every implementation")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shape, args.layouts, args.steps, args.warmup = "smoke", "2x16", 2, 1
    impls = args.impls.split(",")
    for i in impls:
        if i not in IMPLS:
            ap.error(f"--impls: unknown implementation {i!r} (expected some of: {', '.join(IMPLS)})")
    from red_megatron.policy.parallel import init_model_parallel

    init_model_parallel(tp=1, pp=1, seed=0)
    cfg = moe_config_dict(args.shape, args.layers)
    out = {"meta": run_meta(shape=args.shape, layers=args.layers, vocab=cfg["vocab_size"]), "config": cfg, "runs": []}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps(out["meta"]), flush=True)
    for lay in args.layouts.split(","):
        B, S = (int(v) for v in lay.split("x"))
        for impl in impls:
            t0 = time.time()
            r = run_one(impl, cfg, B, S, args.steps, args.warmup)
            r["wall_s"] = round(time.time() - t0, 1)
            out["runs"].append(r)
            print(_fmt(r), f"({r['wall_s']} s)", flush=True)
            path.with_suffix(".tmp").write_text(json.dumps(out, indent=1))
            os.replace(path.with_suffix(".tmp"), path)
    print("\n| impl | layers | B×S | ms fwd+bwd | tokens/s | TFLOP/s (active) | peak GiB |\n"
          "|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        print(_fmt(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
