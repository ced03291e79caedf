"""Benchmark of the fused RED loss kernel (kernels/red_loss.py) on one GPU, one process.

Forward + backward over materialised bf16 logits [N, V], against:
  copy roofline  1.5 × a device-to-device copy of the logits (the op must read the logits in the
                 forward, read them again and write the gradient in the backward: 3 × N·V·2 bytes);
  naive PyTorch  kernels.red_loss_reference in fp32: log_softmax + entropy from the logits composed
                 with red_megatron.algo's red_token_loss (all four kinds), plain autograd;
  torch.compile  of the same function;
  Liger-Kernel   triton_grpo_loss (a peer: no entropy, no TP, one clipped GRPO kind), inplace;
  red_loss       this kernel, gradient in a fresh buffer, and with grad_in_forward (in place).
Also: a tuning sweep of block size / warps / stages per pass, a two-shard run on one GPU (V split
in halves, the all_gather replaced by a local merge) timing one rank's share, and correctness at
N=16,384, V=151,936 against a float64 reference (relative errors). Writes JSON to --out and appends
the table's rows to kernel_bench.csv beside it (bench_util.rows_beside). Timing: bench_util.time_ms
(triton.testing.do_bench on the GPU, wall clock on the CPU).

Usage (on the GPU machine): python3 benchmarks/kernel_bench.py --out $OUT [--quick]
  --shape 16384x151936 --no-sweep   one (N, V) for every part, no tuning sweep (gpu_pending.sh all)
  --smoke                           CPU, TRITON_INTERPRET=1, N=64 x V=512: every part's code path runs
                                    (timings are wall clock and meaningless; no peak memory)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_util  # noqa: E402,F401  (repository root on sys.path; TRITON_INTERPRET=1 without CUDA)
import triton  # noqa: E402

from kernels import red_loss as red_loss_mod  # noqa: E402,F401
from kernels.red_loss import (KernelConfig, _shard_grad, _shard_stats, _token_math, red_loss,  # noqa: E402
                              set_kernel_config)
from kernels.red_loss_reference import red_loss_reference  # noqa: E402

GiB = 1024 ** 3
RESULTS: dict = {}
_COMPILED = None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
OUT_DIR: str | None = None  # set by main(): the table is saved after every variant


def save(out_dir):  # whole or not at all: a run killed by its time limit keeps the last complete file
    path = os.path.join(out_dir, "kernel_bench.json")
    with open(path + ".tmp", "w") as f:
        json.dump(RESULTS, f, indent=1)
    os.replace(path + ".tmp", path)


def make_inputs(n, v, *, vocab_size=None, dtype=torch.bfloat16, seed=0, temperature=1.0, dev=DEV):
    g = torch.Generator(device=dev).manual_seed(seed)
    vocab_size = v if vocab_size is None else vocab_size
    logits = (torch.randn(n, v, generator=g, device=dev) * 2.0).to(dtype)
    target = torch.randint(0, vocab_size, (n,), generator=g, device=dev)
    kind = torch.randint(0, 4, (n,), generator=g, device=dev, dtype=torch.int32)
    logp_guess = -torch.rand(n, generator=g, device=dev) * 12.0
    per = dict(kind_N=kind, adv_N=torch.randn(n, generator=g, device=dev),
               logp_old_N=logp_guess, rbar_N=torch.rand(n, generator=g, device=dev),
               w_N=1.0 + torch.rand(n, generator=g, device=dev), weight_N=torch.rand(n, generator=g, device=dev) / n,
               ref_logp_N=logp_guess + 0.1 * torch.randn(n, generator=g, device=dev))
    return logits, target, per


def peak_extra(fn) -> float:
    """GiB allocated beyond what was live before the call, result kept alive (None on the CPU)."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    res = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del res
    return peak / GiB


def variants(n, v, T=1.0, eps=0.2, ec=0.01):
    """name -> (setup() -> state, step(state) -> grad). Fresh inputs per variant."""
    global _COMPILED
    if _COMPILED is None:  # one compiled function for every shape (dynamic): compile once
        _COMPILED = torch.compile(red_loss_reference, dynamic=True)
    compiled = _COMPILED

    def ours(gif):
        def setup():
            logits, target, per = make_inputs(n, v, temperature=T)
            per.pop("ref_logp_N")
            return logits.requires_grad_(), target, per

        def step(st):
            x, target, per = st
            out = red_loss(x, target, vocab_start=0, vocab_size=v, temperature=T, entropy_coef=ec,
                           grad_in_forward=gif, **per)
            return torch.autograd.grad(out.loss, x)[0]
        return setup, step

    def torch_impl(fn):
        def setup():
            logits, target, per = make_inputs(n, v, temperature=T)
            return logits.requires_grad_(), target, per

        def step(st):
            x, target, p = st
            out = fn(x, target, vocab_start=0, vocab_size=v, temperature=T, eps_lo=eps, eps_hi=eps, entropy_coef=ec, **p)
            return torch.autograd.grad(out.loss, x)[0]
        return setup, step

    def liger():
        B = 16
        L = n // B

        def setup():  # the import here: without liger-kernel only this variant fails, not the table
            from liger_kernel.transformers.grpo_loss import triton_grpo_loss  # noqa: F401
            logits, target, per = make_inputs(B * (L + 1), v, temperature=T)
            return (logits.view(B, L + 1, v).requires_grad_(), target[: B * L].view(B, L),
                    per["logp_old_N"][: B * L].view(B, L).contiguous(), per["adv_N"][:B].contiguous())

        def step(st):
            from liger_kernel.transformers.grpo_loss import triton_grpo_loss
            x, ids, old, adv = st
            loss, _ = triton_grpo_loss(x, old, None, ids, adv, None, temperature=T, beta=0.0, eps_low=eps,
                                       eps_high=eps, inplace=True, loss_type="grpo", reduce=True)
            return torch.autograd.grad(loss, x)[0]
        return setup, step

    return {"naive": torch_impl(red_loss_reference), "compile": torch_impl(compiled), "liger": liger(),
            "red_loss": ours(False), "red_loss_gif": ours(True)}


def copy_roofline_ms(n, v) -> float:
    a = torch.empty(n, v, dtype=torch.bfloat16, device=DEV).normal_()
    b = torch.empty_like(a)
    ms = bench_util.time_ms(lambda: b.copy_(a), reps=20)
    del a, b
    return 1.5 * ms


def sweep(n=16384, v=151936):
    """Time pass 1 and pass 4 alone over launch configurations (each pass tuned on its own);
    return the best config."""
    import dataclasses
    logits, target, per = make_inputs(n, v)
    per.pop("ref_logp_N")
    grad = torch.empty_like(logits)
    one = torch.ones(1, device=DEV)
    base = KernelConfig()
    set_kernel_config(base)
    tok = _token_math(_shard_stats(logits, target, 0, v, 1.0).unsqueeze(0), temperature=1.0,
                      per_token={**per, "ref_logp_N": None})
    rows, best = [], {}
    grids = {
        "stats": [dict(block_v_stats=b, warps_stats=w, stages_stats=st, stream=sm)
                  for b in (4096, 8192, 16384) for w in (2, 4, 8) for st in (1, 3) for sm in (False, True)],
        "grad": [dict(block_v_grad=b, warps_grad=w, stages_grad=st, stream=sm)
                 for b in (1024, 2048, 4096) for w in (8, 16) for st in (1, 3) for sm in (False, True)],
    }
    for which, grid in grids.items():
        for params in grid:
            cfg = dataclasses.replace(base, **params)
            set_kernel_config(cfg)
            try:
                if which == "stats":
                    ms = bench_util.time_ms(lambda: _shard_stats(logits, target, 0, v, 1.0), reps=10)
                else:
                    ms = bench_util.time_ms(lambda: _shard_grad(logits, grad, target, tok, one, None, 0, v, 1.0), reps=10)
            except Exception as e:  # a config that does not compile is skipped, and said so
                rows.append(dict(pass_=which, **params, error=repr(e)[:200]))
                continue
            rows.append(dict(pass_=which, **params, ms=ms))
            print(f"sweep {which} {params}: {ms:.3f} ms", flush=True)
            if ms < best.get(which, (1e9, None))[0]:
                best[which] = (ms, params)
    # one 'stream' flag serves both passes: take the grad pass's choice (it moves 2/3 of the bytes)
    stats_params = dict(best["stats"][1])
    stats_params.pop("stream")
    cfg = dataclasses.replace(base, **stats_params, **best["grad"][1])
    set_kernel_config(cfg)
    t1 = bench_util.time_ms(lambda: _shard_stats(logits, target, 0, v, 1.0), reps=20)
    t4 = bench_util.time_ms(lambda: _shard_grad(logits, grad, target, tok, one, None, 0, v, 1.0), reps=20)
    RESULTS["sweep"] = dict(n=n, v=v, rows=rows, best=dict(vars(cfg)), stats_ms=t1, grad_ms=t4,
                            read_TBps_stats=n * v * 2 / (t1 * 1e-3) / 1e12,
                            rw_TBps_grad=2 * n * v * 2 / (t4 * 1e-3) / 1e12)
    print("chosen", RESULTS["sweep"]["best"], f"stats {t1:.3f} ms grad {t4:.3f} ms", flush=True)
    del logits, grad
    return cfg


def bench_table(shapes, names=None):
    """Each (N, V): the copy roofline, then the variants ``names`` (default all) in that order; the
    table is saved after every variant, so a run cut short keeps what it measured."""
    rows = []
    RESULTS["table"] = rows
    for n, v in shapes:
        roof = copy_roofline_ms(n, v)
        row = dict(n=n, v=v, logits_GiB=n * v * 2 / GiB, roofline_ms=roof)
        rows.append(row)
        print(f"N={n} V={v}: roofline {roof:.3f} ms", flush=True)
        table = variants(n, v)
        for name in names or list(table):
            setup, step = table[name]
            try:
                st = setup()
                ms = bench_util.time_ms(lambda: step(st), reps=10 if name not in ("naive", "compile") else 5, warmup=2)
                del st
                st = setup()
                mem = peak_extra(lambda: step(st))
                del st
                row[name] = dict(ms=ms, extra_GiB=mem)
                bench_util.rows_beside(os.path.join(OUT_DIR or ".", "kernel_bench.json"),
                                       [dict(part="table", n=n, v=v, variant=name, ms=ms, extra_GiB=mem,
                                             roofline_ms=roof)], RESULTS.get("meta", {}),
                                       config=dict(dtype="bfloat16", temperature=1.0, entropy_coef=0.01))
                print(f"  {name:13s} {ms:8.3f} ms  +{mem if mem is not None else float('nan'):6.2f} GiB", flush=True)
            except Exception as e:
                row[name] = dict(error=repr(e)[:300])
                print(f"  {name}: FAILED {e!r}"[:300], flush=True)
            torch.cuda.empty_cache()
            if OUT_DIR:
                save(OUT_DIR)
    return rows


def diag_inplace(n=16384, v=151936):
    """Is pass 4 slower writing in place (grad_in_forward) than into a fresh buffer?"""
    logits, target, per = make_inputs(n, v)
    per.pop("ref_logp_N")
    one = torch.ones(1, device=DEV)
    tok = _token_math(_shard_stats(logits, target, 0, v, 1.0).unsqueeze(0), temperature=1.0,
                      per_token={**per, "ref_logp_N": None})
    grad = torch.empty_like(logits)
    t_out = bench_util.time_ms(lambda: _shard_grad(logits, grad, target, tok, one, None, 0, v, 1.0), reps=20)
    del grad
    t_in = bench_util.time_ms(lambda: _shard_grad(logits, logits, target, tok, one, None, 0, v, 1.0), reps=20)
    RESULTS["diag_inplace"] = dict(n=n, v=v, grad_out_of_place_ms=t_out, grad_in_place_ms=t_in)
    print("diag_inplace", RESULTS["diag_inplace"], flush=True)


def two_shard(n=16384, v=151936, T=1.0, ec=0.01):
    """One GPU, V split in halves: each 'rank' runs pass 1 on its half, the all_gather is a local
    stack of the two [N, 4] tuples, then token math and pass 4 on its half. Time rank 0's share
    against the whole-vocabulary run, and check the merged result equals the unsharded one."""
    logits, target, per = make_inputs(n, v, temperature=T)
    per.pop("ref_logp_N")
    h = v // 2
    shards = [logits[:, :h].contiguous(), logits[:, h:].contiguous()]
    opts = dict(per_token={**per, "ref_logp_N": None}, entropy_coef=ec, temperature=T)
    one = torch.ones(1, device=DEV)

    def full_step():
        tok = _token_math(_shard_stats(logits, target, 0, v, T).unsqueeze(0), **opts)
        g = torch.empty_like(logits)
        _shard_grad(logits, g, target, tok, one, None, 0, v, T)
        return tok, g

    other = _shard_stats(shards[1], target, h, v, T)

    def rank0_step():
        st = torch.stack([_shard_stats(shards[0], target, 0, v, T), other])  # local merge for all_gather
        tok = _token_math(st, **opts)
        g = torch.empty_like(shards[0])
        _shard_grad(shards[0], g, target, tok, one, None, 0, v, T)
        return tok, g

    t_full = bench_util.time_ms(full_step, reps=10)
    t_rank = bench_util.time_ms(rank0_step, reps=10)
    tok_f, g_f = full_step()
    stats = torch.stack([_shard_stats(s, target, i * h, v, T) for i, s in enumerate(shards)])
    tok_s = _token_math(stats, **opts)
    gs = []
    for i, s in enumerate(shards):
        g = torch.empty_like(s)
        _shard_grad(s, g, target, tok_s, one, None, i * h, v, T)
        gs.append(g)
    g_s = torch.cat(gs, 1)
    res = dict(n=n, v=v, full_ms=t_full, rank_ms=t_rank, ratio=t_rank / t_full,
               loss_rel=float((tok_s["contrib"].sum() - tok_f["contrib"].sum()).abs() / tok_f["contrib"].sum().abs()),
               logp_maxabs=float((tok_s["logp"] - tok_f["logp"]).abs().max()),
               ent_maxabs=float((tok_s["ent"] - tok_f["ent"]).abs().max()),
               grad_rel=float((g_s.float() - g_f.float()).norm() / g_f.float().norm()))
    RESULTS["two_shard"] = res
    print("two-shard:", res, flush=True)


def correctness(n=16384, v=151936, vocab_size=None, T=0.7, chunk=1024):
    """Kernel (bf16 logits, padded vocab, entropy and KL terms on) vs float64 reference, row chunks."""
    vocab_size = vocab_size or (151665 if v == 151936 else v - v // 16)  # Qwen2.5's padding, or 1/16 padded
    out = {}
    for gif in (False, True):
        logits, target, per = make_inputs(n, v, vocab_size=vocab_size, temperature=T, seed=123)
        kw = dict(vocab_start=0, vocab_size=vocab_size, temperature=T, entropy_coef=0.01, kl_coef=0.05)
        x = logits.clone().requires_grad_()
        o = red_loss(x, target, grad_in_forward=gif, **kw, **per)
        (g,) = torch.autograd.grad(o.loss, x)
        del x
        acc = dict(d_lp=0.0, n_lp=0.0, d_ent=0.0, n_ent=0.0, d_g=0.0, n_g=0.0, loss=0.0, max_lp=-1e9, min_ent=1e9)
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            xr = logits[sl].double().requires_grad_()
            r = red_loss_reference(xr, target[sl], **kw, **{k: t[sl].double() if t.dtype.is_floating_point else t[sl]
                                                         for k, t in per.items()})
            (gr,) = torch.autograd.grad(r.loss, xr)
            r = r._replace(entropy_N=r.entropy_N.detach())
            acc["d_lp"] += float(((o.logp_N[sl].double() - r.logp_N) ** 2).sum())
            acc["n_lp"] += float((r.logp_N ** 2).sum())
            acc["d_ent"] += float(((o.entropy_N[sl].detach().double() - r.entropy_N) ** 2).sum())
            acc["n_ent"] += float((r.entropy_N ** 2).sum())
            acc["d_g"] += float(((g[sl].double() - gr) ** 2).sum())
            acc["n_g"] += float((gr ** 2).sum())
            acc["loss"] += float(r.loss)
            del xr, gr, r
        out["grad_in_forward" if gif else "plain"] = dict(
            logp_rel=(acc["d_lp"] / acc["n_lp"]) ** 0.5, entropy_rel=(acc["d_ent"] / acc["n_ent"]) ** 0.5,
            grad_rel=(acc["d_g"] / acc["n_g"]) ** 0.5, loss_rel=abs(float(o.loss) - acc["loss"]) / abs(acc["loss"]),
            max_logp=float(o.logp_N.max()), min_entropy=float(o.entropy_N.detach().min()),
            grad_finite=bool(torch.isfinite(g).all()), padded_grad_maxabs=float(g[:, vocab_size:].abs().max()))
        print("correctness", "gif" if gif else "plain", out["grad_in_forward" if gif else "plain"], flush=True)
        del logits, g, o
        torch.cuda.empty_cache()
    RESULTS["correctness"] = dict(n=n, v=v, vocab_size=vocab_size, temperature=T, dtype="bfloat16",
                                  entropy_coef=0.01, kl_coef=0.05, **out)


def main():
    global OUT_DIR
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--parts", default="sweep,diag,table,two_shard,correctness")
    ap.add_argument("--shape", default=None, help="NxV: one shape for every part (default: the full grid)")
    ap.add_argument("--variants", default=None, help="table variants, in this order (default: "
                    "naive,compile,liger,red_loss,red_loss_gif)")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: 64x512, no sweep/compile/liger")
    args = ap.parse_args()
    if args.smoke:
        args.shape, args.no_sweep = args.shape or "64x512", True
        args.variants = args.variants or "red_loss,red_loss_gif,naive"
    m = re.fullmatch(r"(\d+)x(\d+)", args.shape or "0x0")
    shape = (int(m[1]), int(m[2])) if m and args.shape else None
    if args.shape and (shape is None or min(shape) < 2):
        ap.error(f"--shape: expected NxV with N, V >= 2 (e.g. 16384x151936), got {args.shape!r}")
    names = args.variants.split(",") if args.variants else None
    known = ("naive", "compile", "liger", "red_loss", "red_loss_gif")
    if names and any(x not in known for x in names):
        ap.error(f"--variants: unknown {[x for x in names if x not in known]}; valid: {','.join(known)}")
    parts = args.parts.split(",")
    os.makedirs(args.out, exist_ok=True)
    OUT_DIR = args.out
    cuda = torch.cuda.is_available()
    RESULTS["meta"] = bench_util.run_meta(
        sm_count=torch.cuda.get_device_properties(0).multi_processor_count if cuda else None, args=vars(args))
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version
        RESULTS["meta"]["liger_kernel"] = version("liger-kernel")
    except Exception as e:
        RESULTS["meta"]["liger_kernel"] = f"unavailable: {e!r}"
    print(RESULTS["meta"], flush=True)
    one = dict(n=shape[0], v=shape[1]) if shape else {}
    for part in parts:
        t0 = time.time()
        try:
            if part == "sweep" and not args.no_sweep:
                cfg = sweep(**one)
                set_kernel_config(cfg)
                print("best config", cfg, flush=True)
            elif part == "table":
                shapes = [shape] if shape else [(4096, 151936), (16384, 151936)] if args.quick else [
                    (n, v) for n in (4096, 16384) for v in (32000, 128256, 151936)]
                bench_table(shapes, names)
            elif part == "diag":
                diag_inplace(**one)
            elif part == "two_shard":
                two_shard(**one)
            elif part == "correctness":
                correctness(**one, chunk=min(1024, shape[0]) if shape else 1024)
        except Exception:
            RESULTS.setdefault("errors", {})[part] = traceback.format_exc()[-2000:]
            traceback.print_exc()
        RESULTS.setdefault("part_seconds", {})[part] = time.time() - t0
        save(args.out)
    summary()


def summary():
    """A short table last: the reply carries the end of the output."""
    print("\n=== summary ===")
    if "sweep" in RESULTS:
        print("best config:", RESULTS["sweep"]["best"])
    for row in RESULTS.get("table", []):
        cells = []
        for k in ("naive", "compile", "liger", "red_loss", "red_loss_gif"):
            c = row.get(k, {})
            if "ms" in c:
                mem = "" if c["extra_GiB"] is None else f"/+{c['extra_GiB']:.2f}G"
                cells.append(f"{k} {c['ms']:.2f}ms{mem}")
            elif k in row:
                cells.append(f"{k} ERR")
        print(f"N={row['n']} V={row['v']} roof {row['roofline_ms']:.2f}ms | " + " | ".join(cells))
    for k in ("diag_inplace", "two_shard", "correctness"):
        if k in RESULTS:
            print(k, RESULTS[k])
    if "errors" in RESULTS:
        print("ERRORS in parts:", list(RESULTS["errors"]))

if __name__ == "__main__":
    main()
