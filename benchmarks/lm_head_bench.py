"""The LM head fused into the RED loss (kernels/lm_head_loss.py) vs the head's matmul + red_loss.

Per shape N x D x V (tokens, hidden, vocabulary shard) and pass, one process, one device:
  update       forward + backward of the loss, gradients to the hidden states and the weight
  old_logprob  the no-grad log-prob + entropy pass
Variants:
  unfused        F.linear(h, W) (cuBLAS) -> kernels.red_loss with grad_in_forward (the trainer's path: bf16
                 logits, their gradient in place), the matmul's backward by autograd
  fused          lm_head_red_loss / lm_head_logprob_entropy, backend "triton", default chunk (or --chunk)
  unfused_ref    F.linear -> kernels.red_loss_reference (plain PyTorch: fp32 log-softmax, autograd)
  fused_torch    the fused op with backend "torch" (the PyTorch twins of the Triton passes)
Measured: milliseconds (median of --repeats after a warm-up; GPU-synchronised wall clock), peak
memory beyond what was live before the call (GPU: torch.cuda.max_memory_allocated; CPU: the process's
peak RSS, reset through /proc/self/clear_refs, with glibc's mmap threshold fixed at 64 KiB so freed
buffers go back to the system), and each variant's agreement with the first one (logp, dL/dW).

    python benchmarks/lm_head_bench.py --json OUT.json [--sizes 16384x1536x151936,...] [--variants ...]
    python benchmarks/lm_head_bench.py --smoke --json OUT.json          # CPU, tiny, every code path
    python benchmarks/lm_head_bench.py --cpu-report                      # the CPU memory report's run

The JSON is rewritten after every measurement (a run cut by its time limit keeps what it measured);
rows also go to the CSV beside it (bench_util.rows_beside).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import GiB, rows_beside, run_meta, wall_times  # noqa: E402

from kernels.lm_head_loss import chunk_rows, lm_head_logprob_entropy, lm_head_red_loss  # noqa: E402
from kernels.red_loss import logprob_entropy, red_loss  # noqa: E402
from kernels.red_loss_reference import logprob_entropy as ref_logprob_entropy  # noqa: E402
from kernels.red_loss_reference import red_loss_reference  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
VARIANTS = ("unfused", "fused", "unfused_ref", "fused_torch")
PASSES = ("update", "old_logprob")
GPU_SHAPES = "16384x1536x151936,16384x3584x151936,65536x1536x151936"
# the CPU report: the PyTorch variants at a size where memory dominates, all four at one the interpreter can run
CPU_REPORT_PLAN = (("2048x256x32768", "unfused_ref,fused_torch"), ("256x128x8192", ",".join(VARIANTS)))


def _status(field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) * 1024


def peak_extra_bytes(fn):
    """(bytes allocated beyond what was live before ``fn()``, seconds, fn's result): the result is
    alive when the peak is read, as the gradients would be in a training step."""
    gc.collect()
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        res = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, time.perf_counter() - t0, res
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status("VmRSS")
    t0 = time.perf_counter()
    res = fn()
    return _status("VmHWM") - base, time.perf_counter() - t0, res


def make_inputs(n: int, d: int, v: int, dtype, seed: int = 0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    h = (torch.randn(n, d, generator=g, device=DEV)).to(dtype)
    w = (torch.randn(v, d, generator=g, device=DEV) * (2.0 / d ** 0.5)).to(dtype)
    target = torch.randint(0, v, (n,), generator=g, device=DEV)
    logp_guess = -torch.rand(n, generator=g, device=DEV) * 12.0
    per = dict(kind_N=torch.randint(0, 4, (n,), generator=g, device=DEV, dtype=torch.int32),
               adv_N=torch.randn(n, generator=g, device=DEV), logp_old_N=logp_guess,
               rbar_N=torch.rand(n, generator=g, device=DEV), w_N=1.0 + torch.rand(n, generator=g, device=DEV),
               weight_N=torch.rand(n, generator=g, device=DEV) / n)
    return h, w, target, per


def _calls(variant: str, h, w, target, per, chunk):
    """(update(), old_logprob()) closures of a variant; update returns (logp_N, dL/dW)."""
    kw = dict(vocab_start=0, vocab_size=w.shape[0], temperature=1.0)
    fused_be = {"fused": "triton", "fused_torch": "torch"}.get(variant)

    def update():
        hx, wx = h.detach().requires_grad_(), w.detach().requires_grad_()
        if fused_be:
            out = lm_head_red_loss(hx, wx, target, **per, **kw, backend=fused_be, chunk_tokens=chunk)
        else:
            logits = torch.nn.functional.linear(hx, wx)
            fn = red_loss if variant == "unfused" else red_loss_reference
            out = fn(logits, target, **per, **kw, grad_in_forward=variant == "unfused")
        out.loss.backward()
        return out.logp_N, wx.grad

    def old_logprob():
        with torch.no_grad():
            if fused_be:
                return lm_head_logprob_entropy(h, w, target, **kw, backend=fused_be, chunk_tokens=chunk)
            fn = logprob_entropy if variant == "unfused" else ref_logprob_entropy
            return fn(torch.nn.functional.linear(h, w), target, **kw)

    return {"update": update, "old_logprob": old_logprob}


def run(plan, passes, *, dtype, chunk, repeats, json_path, warm_cpu=False):
    """``plan``: [((N, D, V), variants), ...], measured in that order."""
    res = {"meta": run_meta(benchmark="lm_head_bench", dtype=str(dtype), chunk=chunk), "rows": [], "errors": []}

    def save():
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{json_path}.tmp"
            Path(tmp).write_text(json.dumps(res, indent=1))
            os.replace(tmp, json_path)

    if warm_cpu and DEV == "cpu":  # the interpreter's and the allocator's first-call costs off the measured calls
        small = make_inputs(64, 32, 512, dtype)
        for var in VARIANTS:
            for p in passes:
                _calls(var, *small, 16)[p]()
    for (n, d, v), variants in plan:
        h, w, target, per = make_inputs(n, d, v, dtype)
        first = {}
        for p in passes:
            for var in variants:
                row = {"n": n, "d": d, "v": v, "pass": p, "variant": var,
                       "chunk": chunk_rows(n, v, h.element_size(), chunk) if var.startswith("fused") else None}
                try:
                    fn = _calls(var, h, w, target, per, chunk)[p]
                    peak, secs, out = peak_extra_bytes(fn)
                    row["peak_gib"] = peak / GiB
                    if DEV == "cuda":  # the first call above compiled and warmed up
                        row["ms"] = 1e3 * statistics.median(wall_times(fn, repeats, warmup=0))
                    else:  # the interpreter: one call is the measurement (wall clock, meaningless for Triton)
                        row["ms"] = 1e3 * secs
                    if p not in first:
                        first[p] = (var, out)
                    else:  # agreement with the pass's first variant
                        ref_var, ref = first[p]
                        row["vs"] = ref_var
                        row["logp_maxabs"] = float((out[0].float() - ref[0].float()).abs().max())
                        if p == "update":
                            a, b = out[1].float(), ref[1].float()
                            row["dW_rel"] = float((a - b).norm() / b.norm().clamp(min=1e-30))
                    del out
                except Exception as e:  # noqa: BLE001 - one failed variant must not lose the others
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    res["errors"].append({"row": {k: row[k] for k in ("n", "d", "v", "pass", "variant")},
                                          "trace": traceback.format_exc()[-2000:]})
                res["rows"].append(row)
                print(json.dumps(row), flush=True)
                save()
        del h, w, target, per, first
        gc.collect()
    if DEV == "cuda":  # did the bf16 chunks' dW products go straight into fp32 (torch.addmm out_dtype)?
        from kernels.lm_head_loss import _ADDMM_OUT_DTYPE
        res["meta"]["addmm_fp32_out"] = _ADDMM_OUT_DTYPE[0]
    if not res["errors"]:
        del res["errors"]
    save()
    if json_path:
        rows_beside(json_path, res["rows"], res["meta"])
    return res


def _shape(s: str) -> tuple[int, int, int]:
    try:
        n, d, v = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise SystemExit(f"lm_head_bench.py: --sizes: expected NxDxV (e.g. 16384x1536x151936), got {s!r}") from None
    return n, d, v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here (rewritten after every measurement)")
    ap.add_argument("--sizes", default=GPU_SHAPES, help="comma-separated NxDxV")
    ap.add_argument("--variants", default="unfused,fused", help=f"comma-separated, of {','.join(VARIANTS)}")
    ap.add_argument("--passes", default="update,old_logprob", help=f"comma-separated, of {','.join(PASSES)}")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--chunk", type=int, default=None, help="tokens per chunk of the fused op (default: its own)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shape, every variant: the code paths")
    ap.add_argument("--cpu-report", action="store_true",
                    help=f"the CPU memory report's run: {CPU_REPORT_PLAN} (the interpreter only at the small one)")
    args = ap.parse_args(argv)
    if DEV == "cpu":  # freed buffers leave the process, so peak RSS counts each variant's own buffers
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
    if args.smoke:
        args.sizes, args.variants, args.chunk, args.repeats = "64x32x512", ",".join(VARIANTS), 16, 1
    elif args.cpu_report:
        args.chunk, args.repeats = 128, 1
    variants = args.variants.split(",")
    passes = args.passes.split(",")
    for name, got, allowed in (("--variants", variants, VARIANTS), ("--passes", passes, PASSES)):
        bad = [x for x in got if x not in allowed]
        if bad:
            print(f"lm_head_bench.py: {name}: unknown {bad}; expected some of {','.join(allowed)}", file=sys.stderr)
            return 2
    plan = ([(_shape(s), v.split(",")) for s, v in CPU_REPORT_PLAN] if args.cpu_report
            else [(_shape(s), variants) for s in args.sizes.split(",")])
    res = run(plan, passes, dtype=getattr(torch, args.dtype), chunk=args.chunk, repeats=args.repeats,
              json_path=args.json, warm_cpu=not args.smoke)
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
