"""Context-parallel attention on one device: correctness and time of the per-chunk SDPA calls.

Emulates every CP rank of one sequence on one GPU (no collective: the all-gathered K/V is the whole
sequence) with ``context_parallel.chunk_attention``, the code ``SDPAttention`` runs under CP, and
compares the reassembled output and its input gradients with one causal SDPA call over the sequence.
On a GPU this shows that the bottom-right causal bias runs on the fused kernels (flash / efficient)
in bf16 at the 1.5B head shape; the time is the attention of all ranks, serialised (a CP rank does
1/CP of it).

    python benchmarks/cp_attention_check.py [--out DIR] [--seq 16384] [--cp 2,4] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_util puts the repository root on sys.path

from bench_util import run_meta, sync  # noqa: E402
from red_megatron.policy.context_parallel import chunk_attention, local_positions  # noqa: E402


def _attend(q, k, v, mask):
    gqa = q.shape[1] != k.shape[1]
    if gqa and q.device.type == "cuda":  # SDPAttention's rule: no native GQA under the bias on CUDA
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        gqa = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **({"enable_gqa": True} if gqa else {}))


def check(seq: int, cp: int, heads: int, kv_heads: int, head_dim: int, dtype, device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(seq, h, head_dim, generator=g).to(device, dtype).requires_grad_()
               for h in (heads, kv_heads, kv_heads))
    # reference: one causal SDPA over the whole sequence
    rep = heads // kv_heads
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.repeat_interleave(rep, 1).transpose(0, 1)[None],
                                         v.repeat_interleave(rep, 1).transpose(0, 1)[None], is_causal=True)[0]
    ref = ref.transpose(0, 1)
    go = torch.randn(ref.shape, generator=g).to(device, dtype)
    ref_grads = torch.autograd.grad(ref, (q, k, v), go)

    def run():
        out = torch.empty_like(ref)
        for r in range(cp):
            pos = local_positions(seq, r, cp).to(device)
            out[pos] = chunk_attention(_attend, q[pos], k, v, cp_rank=r, cp_size=cp)
        return out

    out = run()
    grads = torch.autograd.grad(out, (q, k, v), go)
    def err(a, b):
        a, b = a.detach().float(), b.detach().float()
        return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))

    sync()
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        o = run()
        torch.autograd.grad(o, (q, k, v), go)
    sync()
    ms = (time.perf_counter() - t0) / reps * 1e3
    t0 = time.perf_counter()
    for _ in range(reps):
        r_ = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.repeat_interleave(rep, 1).transpose(0, 1)[None],
                                            v.repeat_interleave(rep, 1).transpose(0, 1)[None], is_causal=True)
        torch.autograd.grad(r_, (q, k, v), go.transpose(0, 1)[None])
    sync()
    full_ms = (time.perf_counter() - t0) / reps * 1e3
    return {"seq": seq, "cp": cp, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "dtype": str(dtype),
            "out_rel_err": err(out, ref), "dq_rel_err": err(grads[0], ref_grads[0]),
            "dk_rel_err": err(grads[1], ref_grads[1]), "dv_rel_err": err(grads[2], ref_grads[2]),
            "chunks_fwd_bwd_ms": ms, "full_causal_fwd_bwd_ms": full_ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--cp", default="2,4")
    ap.add_argument("--smoke", action="store_true", help="tiny shape, fp32, on whatever device (CPU test)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        shape, seq, dtype = (4, 2, 32), 64, torch.float32
    else:
        shape, seq, dtype = (12, 2, 128), args.seq, torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [check(seq, int(cp), *shape, dtype, device) for cp in args.cp.split(",")]
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    res = {"meta": run_meta(benchmark="cp_attention_check"), "tolerance": tol, "rows": rows,
           "ok": all(max(r[k] for k in r if k.endswith("_rel_err")) <= tol for r in rows)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "cp_attention.json").write_text(json.dumps(res, indent=1))
    from bench_util import rows_beside

    rows_beside(Path(args.out) / "cp_attention.json", rows, res["meta"], config=vars(args))
    for r in rows:
        print(f"cp={r['cp']} seq={r['seq']}: out {r['out_rel_err']:.2e} dq {r['dq_rel_err']:.2e} dk "
              f"{r['dk_rel_err']:.2e} dv {r['dv_rel_err']:.2e}; chunks {r['chunks_fwd_bwd_ms']:.1f} ms vs one causal "
              f"call {r['full_causal_fwd_bwd_ms']:.1f} ms")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
