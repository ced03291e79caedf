"""Long sequences: memory per GPU and forward+backward time with sequence and context parallelism.

The step model of ``projection.py`` (its calibrated constants: activation bytes per token·hidden·layer,
LM-head and loss rates, fixed memory) with the layout factors measured on the CPU by
``activation_memory.py`` (bytes autograd saves per layer per global token, rank 0 of 2):

- without SP, a fraction ``f_rep`` of a layer's activations (norm inputs, residual stream) is replicated
  on every TP rank and the rest split: TP=2 saved 0.617 of TP=1, so f_rep = 2·0.617 − 1 = 0.234;
- with SP everything is split (TP=2 + SP: 0.504 ≈ 1/2); CP=2 divides by CP (0.498).

Per GPU, for one sequence of S tokens in the micro-batch (the longest case a step must fit):
  memory = weights + grads + optimizer (sharded over DP×CP) + activations(S/CP tokens, 1/TP with SP)
           + logits (S/CP rows × V/TP, bf16, gradient in place) + fixed
  with policy.fused_lm_head (kernels/lm_head_loss.py) the logits term is the op's own peak (its extra_bytes:
  one tile of logits, one block's fp32 dW, dh summed in fp32), and the time gains one LM-head GEMM (the
  backward recomputes the logits): 2·D·V/TP flops per token.
  time   = projection.fwd_bwd_seconds at S/CP tokens with the attention term at S (causal work is split
           evenly by the load-balanced chunks) / TP + the CP K/V all-gather and reduce-scatter over NVLink.
The attention's own score memory is O(S) (flash / cuDNN SDPA), so it does not enter.

    python benchmarks/projection_long.py [--report]
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from projection import GiB, SHAPES, Constants, Hardware, Shape, calibrated_constants, fwd_bwd_seconds, \
    params_per_gpu  # noqa: E402

from kernels.lm_head_loss import extra_bytes  # noqa: E402

REPORTS = Path(__file__).resolve().parent / "reports"
MEASURED = REPORTS / "activation_memory_2026-12-02.json"


@dataclass(frozen=True, kw_only=True)
class LongLayout:
    name: str
    tp: int
    pp: int = 1
    cp: int = 1
    sp: bool = False
    gpus: int = 8  # the job's GPUs: the optimizer is sharded over DP × CP = gpus / (tp · pp)


def layout_factors(path: Path = MEASURED) -> dict:
    """f_rep (replicated fraction without SP) and the CP divisor, from the CPU measurement."""
    rows = {r["layout"]: r["vs_tp1"] for r in json.loads(path.read_text())["rows"]}
    return {"f_rep": 2 * rows["tp2"] - 1, "sp_tp2": rows["tp2_sp"], "cp2": rows["cp2"]}


def act_fraction(lay: LongLayout, f_rep: float) -> float:
    """A rank's share of one layer's activations of the whole sequence."""
    split = 1.0 / lay.tp if lay.sp else (1 - f_rep) / lay.tp + f_rep
    return split / lay.cp


def logits_bytes(s: Shape, lay: LongLayout, S: int, c: Constants, fused_head: bool = False) -> float:
    """What the loss holds beyond the activations: every logit of the rank's S/CP rows (bf16, gradient in
    place), or with the fused head the op's own buffers at its peak (kernels.lm_head_loss.extra_bytes)."""
    v_local, rows = s.vocab / lay.tp, S / lay.cp
    if not fused_head:
        return c.logit_bytes * rows * v_local
    return float(extra_bytes(int(rows), s.hidden, int(v_local)))


def memory_bytes(s: Shape, lay: LongLayout, S: int, c: Constants, hw: Hardware, f_rep: float,
                 fused_head: bool = False) -> float:
    d_opt = lay.gpus // (lay.tp * lay.pp)  # distributed optimizer over DP × CP
    states = params_per_gpu(s, lay.tp, lay.pp) * (2 + 4 + 12 / d_opt)
    # 1F1B: the first stage holds PP micro-batches in flight, each through its layers/PP layers
    acts = c.act * s.hidden * (s.layers / lay.pp) * S * act_fraction(lay, f_rep) * lay.pp
    logits = logits_bytes(s, lay, S, c, fused_head)
    kv_gather = 2 * 2 * S * s.kv_heads * s.head_dim / lay.tp if lay.cp > 1 else 0.0  # one layer's gathered K/V
    return states + acts + logits + kv_gather + c.c0


def longest(s: Shape, lay: LongLayout, c: Constants, hw: Hardware, f_rep: float, fused_head: bool = False) -> int:
    """The longest sequence (a multiple of 1024) whose micro-batch fits one GPU."""
    lo, hi = 0, 1 << 24
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        if memory_bytes(s, lay, mid, c, hw, f_rep, fused_head) <= hw.hbm_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def seconds(s: Shape, lay: LongLayout, S: int, c: Constants, hw: Hardware, fused_head: bool = False) -> float:
    """Forward + backward of one S-token sequence on one GPU of the layout (all of its PP stages' time)."""
    local = S // lay.cp
    t = fwd_bwd_seconds(s, local, S, c) / lay.tp
    if fused_head:  # the recomputed chunk logits: one more LM-head GEMM
        t += local * 2.0 * s.hidden * s.vocab / c.r_head / lay.tp
    if lay.cp > 1:  # K/V all-gather (forward) + reduce-scatter of dK/dV (backward), every layer
        kv = 2 * 2 * S * s.kv_heads * s.head_dim / lay.tp
        t += s.layers * 2 * (kv * (lay.cp - 1) / lay.cp / hw.b_nvl + hw.alpha)
    return t


LAYOUTS = {  # SP is on by default whenever TP > 1 (PolicyConfig.sequence_parallel=None): the recipes run it
    "1.5B": [LongLayout(name="TP=1 (qwen25_math_1p5b)", tp=1), LongLayout(name="TP=2 without SP", tp=2),
             LongLayout(name="TP=2+SP", tp=2, sp=True), LongLayout(name="CP=2", tp=1, cp=2),
             LongLayout(name="TP=2+SP, CP=2", tp=2, sp=True, cp=2),
             LongLayout(name="TP=2+SP, CP=4", tp=2, sp=True, cp=4)],
    "7B": [LongLayout(name="TP=2 without SP", tp=2), LongLayout(name="TP=2+SP (qwen25_7b)", tp=2, sp=True),
           LongLayout(name="TP=2+SP, CP=2 (qwen25_7b_16k)", tp=2, sp=True, cp=2),
           LongLayout(name="TP=4+SP, CP=2", tp=4, sp=True, cp=2)],
    "32B": [LongLayout(name="TP=8, PP=2 without SP", tp=8, pp=2, gpus=16),
            LongLayout(name="TP=8+SP, PP=2 (qwen25_32b)", tp=8, pp=2, sp=True, gpus=16),
            LongLayout(name="TP=8+SP, PP=2, CP=2 (qwen25_32b_16k)", tp=8, pp=2, sp=True, cp=2, gpus=32)],
}


def table(c: Constants | None = None, hw: Hardware = Hardware()) -> list[dict]:
    c = c or calibrated_constants()
    f = layout_factors()
    rows = []
    for model, lays in LAYOUTS.items():
        s = SHAPES[model]
        for lay in lays:
            S = longest(s, lay, c, hw, f["f_rep"])
            rows.append({"model": model, "layout": lay.name, "gpus": lay.gpus, "longest_tokens": S,
                         "mem_gib_at_16k": memory_bytes(s, lay, 16384, c, hw, f["f_rep"]) / GiB,
                         "mem_gib_at_32k": memory_bytes(s, lay, 32768, c, hw, f["f_rep"]) / GiB,
                         "fwd_bwd_s_at_16k": seconds(s, lay, 16384, c, hw),
                         "longest_tokens_fused_head": longest(s, lay, c, hw, f["f_rep"], fused_head=True),
                         "mem_gib_at_16k_fused_head": memory_bytes(s, lay, 16384, c, hw, f["f_rep"], True) / GiB,
                         "fwd_bwd_s_at_16k_fused_head": seconds(s, lay, 16384, c, hw, fused_head=True)})
    return rows


def render(rows: list[dict], f: dict) -> str:
    day = datetime.date.today().isoformat()
    out = [f"# Longest trainable sequence per GPU, with SP and CP ({day}, projected for 8×H100-80GB nodes)", "",
           "benchmarks/projection_long.py: projection.py's calibrated step model (benchmarks/reports/projection_*.md)"
           " with layout factors measured on the CPU (benchmarks/reports/activation_memory_2026-12-02.md: "
           f"replicated fraction without SP {f['f_rep']:.3f}, TP=2+SP {f['sp_tp2']:.3f} and CP=2 {f['cp2']:.3f} "
           "of TP=1). One sequence in the micro-batch, bf16, distributed optimizer over DP×CP, fused loss "
           "(no fp32 logit copy). Not measured on a GPU: the CPU's activation account is an upper bound. "
           "*Fused head*: policy.fused_lm_head (kernels/lm_head_loss.py): its own buffers (one tile of logits, "
           "one block's fp32 dW, dh in fp32) instead of all the logits, and one more LM-head GEMM in the time.", "",
           "| model | layout | GPUs | longest sequence (tokens) | longest, fused head | GiB/GPU at 16k | "
           "GiB/GPU at 16k, fused head | GiB/GPU at 32k | fwd+bwd s of a 16k sequence | fwd+bwd s, fused head |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {r['model']} | {r['layout']} | {r['gpus']} | {r['longest_tokens']:,} | "
            f"{r['longest_tokens_fused_head']:,} | {r['mem_gib_at_16k']:.1f} | {r['mem_gib_at_16k_fused_head']:.1f} | "
            f"{r['mem_gib_at_32k']:.1f} | {r['fwd_bwd_s_at_16k']:.2f} | {r['fwd_bwd_s_at_16k_fused_head']:.2f} |"
            for r in rows]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", action="store_true", help="write benchmarks/reports/projection_long_<date>.{md,json}")
    args = ap.parse_args(argv)
    rows, f = table(), layout_factors()
    text = render(rows, f)
    print(text)
    if args.report:
        day = datetime.date.today().isoformat()
        (REPORTS / f"projection_long_{day}.md").write_text(text)
        (REPORTS / f"projection_long_{day}.json").write_text(json.dumps({"factors": f, "rows": rows}, indent=1))
        from bench_util import rows_beside, run_meta

        rows_beside(REPORTS / f"projection_long_{day}.json", rows, run_meta(benchmark="projection_long"), config=f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
