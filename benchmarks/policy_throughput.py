"""Policy forward+backward throughput: Megatron-Core (this repo's model) vs HF transformers + SDPA.

One process, one GPU, TP=1/PP=1, bf16, random weights, loss over all tokens, no optimizer step
(the same protocol as the baselines in ../shared/GPU.md). For each model shape and token layout
(micro-batch × sequence length) it times, with CUDA events after warm-up (median of --steps):

  mcore_sdpa      red_megatron.policy.model.build_model (local spec + SDPAttention), loss from
                  GPTModel's own vocab-parallel cross entropy (fp32 logits inside megatron)
  mcore_sdpa_red  same model, logits -> the project's fused Triton RED loss kernel (NLL kind,
                  token-mean weights = cross entropy), gradient written in place in the forward:
                  the path the trainer uses (policy/passes.py)
  hf_sdpa         transformers' Qwen2ForCausalLM, attn_implementation="sdpa", model(..., labels)

tokens/s, MFU = tokens/s · (6·params + 6·layers·hidden·seq) / 989e12 (H100 SXM dense bf16
datasheet peak, as in GPU.md), and peak memory (torch.cuda.max_memory_allocated). Before timing,
a 2-layer model of the same shape is checked: Megatron bf16 logits (weights loaded from an HF
save_pretrained directory through convert.load_hf_weights) against HF fp32 logits of the same
weights, ‖out−ref‖/‖ref‖, next to HF bf16's own error.

Usage (GPU machine, megatron-core wheel carried):
  python3 benchmarks/policy_throughput.py --out $OUT [--shapes 1.5b,0.5b] [--layouts 1x8192,2x4096]
Writes $OUT/policy_throughput.json and prints a markdown table. --smoke runs a tiny shape on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import (SHAPES, autograd_saved_bytes, bench_device, bench_dtype, build_hf_model, free,  # noqa: E402,F401
                        hf_config_dict, rows_beside, run_meta, step_times_ms, sync, time_ms)  # (sys.path, TRITON_INTERPRET)

PEAK_FLOPS = 989e12
GiB = 1024 ** 3

_device, _dtype = bench_device, bench_dtype


# ---------------------------------------------------------------- models


def build_mcore(cfg: dict, sdpa_backend: str | None = None):
    from red_megatron.policy.model import ModelOptions, build_model
    from red_megatron.policy.parallel import current as parallel_current

    return build_model(cfg, groups=parallel_current(), dtype=_dtype(), options=ModelOptions(attention="sdpa",
                                                                          sdpa_backend=sdpa_backend))[0]


def build_hf(cfg: dict):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return build_hf_model(Qwen2Config, Qwen2ForCausalLM, cfg)


def mcore_step_fn(model, tokens, labels, loss: str):
    B, S = tokens.shape
    pos = torch.arange(S, device=tokens.device).unsqueeze(0).expand(B, S)
    if loss == "megatron_ce":
        def step():
            for p in model.parameters():
                p.grad = None
            model(tokens, pos, attention_mask=None, labels=labels).mean().backward()
        return step
    from kernels.red_loss import red_loss

    N = B * S
    dev = tokens.device
    kind = torch.full((N,), 3, dtype=torch.int32, device=dev)  # NLL: term = logp
    zeros, ones = torch.zeros(N, device=dev), torch.ones(N, device=dev)
    weight = torch.full((N,), 1.0 / N, device=dev)
    target = labels.reshape(-1)
    V = model.hf_config.vocab_size

    def step():
        for p in model.parameters():
            p.grad = None
        logits = model(tokens, pos, attention_mask=None)
        out = red_loss(logits.view(N, -1), target, vocab_start=0, vocab_size=V, temperature=1.0, kind_N=kind,
                       adv_N=zeros, logp_old_N=zeros, rbar_N=ones, w_N=ones, weight_N=weight,
                       grad_in_forward=torch.cuda.is_available())
        out.loss.backward()
    return step


def hf_step_fn(model, tokens):
    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=tokens).loss.backward()
    return step


# ---------------------------------------------------------------- checks and runs


def parity_check(shape: str, tmp: str) -> dict:
    """2-layer model of ``shape``: Megatron bf16 vs HF fp32 logits on HF's own weights."""
    from red_megatron.policy.convert import load_hf_weights
    from red_megatron.policy.parallel import current as parallel_current

    cfg = hf_config_dict(shape, layers=2)
    torch.manual_seed(0)
    hf = build_hf(cfg).eval()
    hf.save_pretrained(tmp)
    with open(os.path.join(tmp, "config.json")) as f:
        saved = json.load(f)
    saved.update({k: cfg[k] for k in ("architectures", "model_type", "rope_theta")})
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(saved, f)
    S = 1024 if torch.cuda.is_available() else 32
    tokens = torch.randint(0, cfg["vocab_size"], (1, S), device=_device())
    with torch.no_grad():
        hf_low = hf(input_ids=tokens).logits.float()
        ref = hf.float()(input_ids=tokens).logits.double()
    del hf
    mc = build_mcore(cfg)
    load_hf_weights([mc], tmp, groups=parallel_current())
    mc.eval()
    with torch.no_grad():
        out = mc(tokens, torch.arange(S, device=_device()).unsqueeze(0), attention_mask=None)[..., :cfg["vocab_size"]]
    rel = lambda x: ((x.double() - ref).norm() / ref.norm()).item()  # noqa: E731
    res = {"shape": shape, "layers": 2, "tokens": S, "mcore_rel_err": rel(out), "hf_lowp_rel_err": rel(hf_low)}
    del mc
    free()
    return res


def run_one(impl: str, shape: str, B: int, S: int, steps: int, warmup: int) -> dict:
    from red_megatron.hf.config import read_hf_config

    cfg = hf_config_dict(shape)
    hf_cfg = read_hf_config(cfg)
    rec = {"impl": impl, "shape": shape, "batch": B, "seq": S, "tokens": B * S}
    free()
    model = None
    try:
        torch.manual_seed(0)
        tokens = torch.randint(0, cfg["vocab_size"], (B, S), device=_device())
        labels = torch.roll(tokens, -1, dims=1)
        if impl.startswith("mcore"):
            backend = {"mcore_sdpa_cudnn": "cudnn", "mcore_sdpa_flash": "flash"}.get(impl)
            model = build_mcore(cfg, sdpa_backend=backend)
            step = mcore_step_fn(model, tokens, labels, "red_kernel" if impl == "mcore_sdpa_red" else "megatron_ce")
        else:
            model = build_hf(cfg)
            step = hf_step_fn(model, tokens)
        rec["model_gib"] = torch.cuda.memory_allocated() / GiB if torch.cuda.is_available() else None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = step_times_ms(step, steps, warmup)
        ms = statistics.median(times)
        params = hf_cfg.num_params()
        flops_tok = 6 * params + 6 * hf_cfg.num_layers * hf_cfg.hidden_size * S
        rec.update(ms=ms, ms_min=min(times), ms_max=max(times), tokens_per_s=B * S / (ms / 1e3),
                   params=params, mfu=B * S / (ms / 1e3) * flops_tok / PEAK_FLOPS,
                   peak_gib=torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else None)
    except torch.cuda.OutOfMemoryError as e:
        rec["error"] = "OOM: " + str(e).split("\n")[0][:160]
    except Exception as e:  # noqa: BLE001 - record and keep benchmarking the rest
        rec["error"] = f"{type(e).__name__}: {e}"[:400]
        traceback.print_exc()
    finally:
        del model
        free()
    return rec


def saved_bytes_per_token(shape: str, T: int, fused: bool) -> dict:
    """Bytes autograd saves per token: one decoder layer, and everything outside the layers.

    Counted with saved_tensors_hooks (unique storages, parameters excluded) on 1- and 2-layer
    models of ``shape``: a device-independent account of activation memory, used to project
    peak memory where no GPU is at hand. Kernels differ by device (e.g. a fused RMSNorm saves
    less than the CPU composite), so on the CPU this is an upper bound for the GPU.
    """
    from red_megatron.policy.model import ModelOptions, build_model
    from red_megatron.policy.parallel import current as parallel_current

    def count(layers: int) -> int:
        cfg = hf_config_dict(shape, layers=layers)
        m = build_model(cfg, groups=parallel_current(), dtype=torch.bfloat16,
                        options=ModelOptions(attention="sdpa", fused_kernels=fused))[0]
        tok = torch.randint(0, cfg["vocab_size"], (1, T), device=_device())
        pos = torch.arange(T, device=_device()).unsqueeze(0)
        # logits only: the fused loss keeps no [N, V] copy
        return autograd_saved_bytes(lambda: m(tok, pos, attention_mask=None))

    one, two = count(1), count(2)
    return {"shape": shape, "T": T, "fused": fused, "per_layer_per_token": (two - one) / T,
            "outside_layers_per_token": (2 * one - two) / T}


def _fmt(r: dict) -> str:
    lay = f"{r['batch']}×{r['seq']:,}"
    if "error" in r:
        return f"| {r['shape']} | {r['impl']} | {lay} | {r['error'][:60]} | | | |"
    pk = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
    return (f"| {r['shape']} | {r['impl']} | {lay} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['mfu']:.1f}% | {pk} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--shapes", default="1.5b")
    ap.add_argument("--layouts", default="1x8192,2x4096,1x16384")
    ap.add_argument("--impls", default="mcore_sdpa_red,mcore_sdpa,hf_sdpa")
    ap.add_argument("--extra", default="", help="shape:impl:BxS,... runs added after the grid")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny shape on whatever device (CPU test)")
    ap.add_argument("--saved-bytes", action="store_true",
                    help="only count autograd-saved bytes per token and layer (runs on the CPU)")
    args = ap.parse_args()
    if args.smoke:
        args.shapes, args.layouts, args.steps, args.warmup = "smoke", "1x64,2x32", 2, 1
    os.makedirs(args.out, exist_ok=True)

    from red_megatron.policy.parallel import init_model_parallel

    init_model_parallel(tp=1, pp=1, seed=0)
    meta = run_meta(peak_flops=PEAK_FLOPS)
    results = {"meta": meta, "parity": [], "runs": []}
    path = os.path.join(args.out, "policy_throughput.json")

    def save():  # atomic: a run killed by its time limit keeps the last complete file
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)

    print(json.dumps(meta), flush=True)
    if args.saved_bytes:
        for shape in args.shapes.split(","):
            for fused in (False, True):
                r = saved_bytes_per_token(shape, 512, fused)
                results.setdefault("saved_bytes", []).append(r)
                print(json.dumps(r), flush=True)
        save()
        return
    shapes = args.shapes.split(",")
    if not args.no_parity:
        import tempfile

        for shape in shapes[:1]:
            try:
                p = parity_check(shape, tempfile.mkdtemp())
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                p = {"shape": shape, "error": f"{type(e).__name__}: {e}"[:400]}
            results["parity"].append(p)
            print("parity", json.dumps(p), flush=True)
            save()
    grid = [(s, i, lay) for s in shapes for lay in args.layouts.split(",") for i in args.impls.split(",")]
    grid += [tuple(x.split(":")) for x in args.extra.split(",") if x]
    for shape, impl, lay in grid:
        B, S = (int(v) for v in lay.split("x"))
        t0 = time.time()
        r = run_one(impl, shape, B, S, args.steps, args.warmup)
        r["wall_s"] = round(time.time() - t0, 1)
        results["runs"].append(r)
        print(_fmt(r), f"({r['wall_s']} s)", flush=True)
        save()
        rows_beside(path, [r], meta, config=dict(steps=args.steps, warmup=args.warmup))
    print("\n| shape | impl | B×S | ms/step | tokens/s | MFU | peak GiB |\n|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(_fmt(r))


if __name__ == "__main__":
    main()
