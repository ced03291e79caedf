"""Projection of RED step time and memory from measured per-layer costs to 8×H100 clusters.

Why a model: the GPU machine here is one H100, so multi-node numbers cannot be measured; they
are *projected* from constants fitted on the single-GPU measurements of
benchmarks/policy_throughput.py, with every assumption stated below and the fit's error on
the measured configurations reported (leave-one-out over model shapes).

The model (per optimiser step; P = parameters, L layers, h hidden, V vocabulary, T sequence
length, t/p/d = tensor/pipeline/data parallel sizes, m = microbatches per DP rank):

Compute, one GPU, no parallelism (fitted):
    t(call) = tokens · [L · (F_layer / R_mm + beta·h) + 6·h·V / R_head + gamma·V] + c_step + t0_loss
    F_layer = 6·P_layer + 6·h·T (causal attention, GPU.md's MFU convention)
  R_mm (effective FLOP/s of the layer stack) and c_step (fixed cost of a forward+backward call:
  launches, syncs) are least-squares fits to measured step times; beta (memory-bound work per
  hidden element) is 0 unless several shapes are measured (with one shape it cannot be separated
  from R_mm). R_head comes from GPU.md's LM-head GEMM measurements, gamma and t0_loss from the
  fused RED loss kernel's report. The fit is checked leave-one-out: every measured configuration
  is predicted from constants fitted without it (see the report for which measurements exist).
Tensor parallel t (Megatron, sequence parallel): compute / t, plus per layer and token 4 collectives
  (2 forward, 2 backward) of h·2 bytes, each moving 2(t−1)/t of it over NVLink at B_nvl, not
  overlapped (assumption: no TE userbuffers), plus alpha latency per collective per microbatch.
Pipeline parallel p, 1F1B: time = (m + p − 1) · (slowest stage per microbatch); the last stage
  also holds the LM head. Bubble fraction (p − 1)/(m + p − 1).
Data parallel d, distributed optimizer: reduce-scatter of fp32 grads + all-gather of bf16 params
  ((d−1)/d · (4 + 2) · P/(t·p) bytes per GPU), at NVLink speed inside a node, at the per-GPU network
  share B_ib across nodes; a fraction (1 − dp_overlap) of it is exposed (the policy's DDP does not
  overlap: dp_overlap = 0, as red_megatron/policy/optim.py configures it).
RED step = old log-prob/entropy forward (1/3 of forward+backward, FLOP ratio 2:6) + update
  (forward+backward) + optimizer (memory-bound, 36 B/param of the local shard) + refit
  (params·2 B over NVLink) + rollout (below; colocated engine: everything is serial).
Rollout (ASSUMED, not measured: vLLM cannot run on the GPU machine here): decode is
  memory-bandwidth-bound: one decode iteration of an engine of t_i GPUs with B running sequences
  reads the weights once and the KV of every running token:
      t_iter = (2·P/t_i + B·ctx·kv_bytes/t_i) / (HBM_bw · eta_bw)  (+ 2L latencies if t_i > 1)
  B is limited by the KV memory left beside the training state (colocated, sleep mode off);
  iterations = max(tokens/B, max response length) (the step waits for its longest sample).
Memory per GPU (training peak):
    P_gpu · (2 + 4 + 12/d)     bf16 weights, fp32 main grads, fp32 master + Adam m, v sharded over d
  + act · h · L/p · tokens_mb · min(m, p) / t     (1F1B keeps up to p microbatches on stage 0)
  + 2 · tokens_mb · V / t                          (bf16 logits of one microbatch; fused loss)
  + c0                                              (CUDA context, NCCL and allocator slack)
  act (bytes per token per hidden element per layer) and c0 are fitted to measured peak memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1024 ** 3


# ----------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True, kw_only=True)
class Shape:
    name: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params_layer(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h + (h + 2 * kv)  # q, k, v, o (+ qkv biases, Qwen2)
        return attn + 3 * h * self.ffn + 2 * h

    @property
    def params(self) -> int:
        emb = self.vocab * self.hidden
        return self.layers * self.params_layer + emb * (1 if self.tied else 2) + self.hidden

    def kv_bytes_per_token(self) -> int:  # bf16 K and V of every layer
        return 2 * 2 * self.layers * self.kv_heads * self.head_dim


def _shapes() -> dict[str, Shape]:
    """The model shapes of benchmarks/bench_util.SHAPES (the one table), as this model's Shape."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_util import SHAPES as TABLE

    out = {}
    for key, (h, L, nh, kv, f, V, tied) in TABLE.items():
        if key.startswith("smoke"):
            continue
        name = key.upper()  # "1.5b" -> "1.5B"
        out[name] = Shape(name=name, layers=L, hidden=h, ffn=f, heads=nh, kv_heads=kv, vocab=V, tied=tied)
    return out


SHAPES = _shapes()


# ----------------------------------------------------------------------------------------------- hardware
@dataclass(frozen=True, kw_only=True)
class Hardware:
    """8×H100 SXM nodes. Datasheet numbers, with the efficiencies marked as assumptions."""

    name: str = "8×H100-SXM-80GB per node, NVLink4, 8×400 Gb/s InfiniBand"
    gpus_per_node: int = 8
    hbm_bytes: float = 79.1 * GiB  # what torch reports as total on the H100 here
    peak_bf16: float = 989e12  # dense datasheet peak (MFU denominator)
    hbm_bw: float = 3.35e12
    eta_bw: float = 0.7  # ASSUMED fraction of HBM bandwidth a decode step reaches
    b_nvl: float = 360e9  # ASSUMED NCCL bus bandwidth of an NVLink4 all-reduce (of 450 GB/s/dir)
    b_ib: float = 40e9  # ASSUMED per-GPU inter-node bus bandwidth (400 Gb/s NDR = 50 GB/s, 80%)
    alpha: float = 15e-6  # ASSUMED latency per collective
    dp_overlap: float = 0.0  # the policy's DDP runs overlap_grad_reduce=False (red_megatron/policy/optim.py)


# ----------------------------------------------------------------------------------------------- constants
@dataclass(kw_only=True)
class Constants:
    r_mm: float  # effective FLOP/s of the layer stack (fitted)
    c_step: float = 0.0  # fixed time per forward+backward call: launches, syncs (fitted)
    beta: float = 0.0  # s per token·hidden·layer of memory-bound work; 0 = folded into r_mm (one measured shape
    #                    cannot separate it: both grow with tokens)
    r_head: float = 720e12  # LM-head GEMM FLOP/s (fitted on GPU.md's two LM-head measurements)
    gamma: float = 5.72e-3 / (16384 * 151936)  # loss s per logit (fitted on the kernel report)
    loss_t0: float = 0.0  # loss per-call overhead (fitted on the kernel report)
    act: float = 34.0  # activation bytes per token·hidden·layer (fitted on peak memory)
    c0: float = 2.0 * GiB  # context + allocator slack (fitted)
    logit_bytes: float = 2.0  # bytes per logit the loss holds: bf16 logits, gradient written in place (the trainer)


def layer_flops_per_token(s: Shape, seq: int) -> float:
    matmul = s.params_layer - (2 * s.hidden + s.hidden + 2 * s.kv_heads * s.head_dim)  # no norms, biases
    return 6.0 * matmul + 6.0 * s.hidden * seq


def model_flops_per_token(s: Shape, seq: int) -> float:
    """MFU numerator as in GPU.md: 6·params + 6·layers·hidden·T."""
    return 6.0 * s.params + 6.0 * s.layers * s.hidden * seq


def fwd_bwd_seconds(s: Shape, tokens: int, seq: int, c: Constants, *, gamma: float | None = None) -> float:
    """One GPU, whole model, forward + backward over ``tokens`` tokens of sequences of length ``seq``."""
    g = c.gamma if gamma is None else gamma
    per_tok = s.layers * (layer_flops_per_token(s, seq) / c.r_mm + c.beta * s.hidden)
    per_tok += 6.0 * s.hidden * s.vocab / c.r_head + g * s.vocab
    return tokens * per_tok + c.c_step + c.loss_t0


def params_per_gpu(s: Shape, t: int = 1, p: int = 1) -> float:
    """The largest stage's share: layers/p plus one V×h matrix (the embedding on the first stage, the head
    (or, tied, the embedding's copy) on the last), or both when p == 1 and the head is untied."""
    vocab_mats = 2 if (p == 1 and not s.tied) else 1
    return (s.layers * s.params_layer / p + vocab_mats * s.vocab * s.hidden) / t


def peak_memory_bytes(s: Shape, tokens_mb: int, c: Constants, *, t=1, p=1, d=1, m=1, optimizer=True,
                      logit_bytes: float | None = None) -> float:
    lb = c.logit_bytes if logit_bytes is None else logit_bytes
    states = params_per_gpu(s, t, p) * ((2 + 4 + 12 / d) if optimizer else (2 + 2))  # w/o optimizer: bf16 w + g
    acts = c.act * s.hidden * (s.layers / p) * tokens_mb * min(m, p) / t
    logits = lb * tokens_mb * s.vocab / t
    return states + acts + logits + c.c0


# ----------------------------------------------------------------------------------------------- fit
@dataclass(kw_only=True)
class Measurement:
    shape: Shape
    tokens: int  # tokens per step (micro-batch × sequence length)
    seq: int
    seconds: float  # forward + backward step time
    peak_bytes: float | None = None
    optimizer: bool = False  # did the measured step hold optimizer state?
    gamma: float | None = None  # the measured implementation's loss cost per logit (None: the fused kernel's)
    logit_bytes: float | None = None  # ... and its bytes per logit
    label: str = ""


def _lstsq2(rows: list[tuple[float, float]], ys: list[float]) -> tuple[float, float]:
    """Non-negative 2-variable least squares on relative error (each row scaled by 1/y)."""
    a11 = a12 = a22 = b1 = b2 = 0.0
    for (x1, x2), y in zip(rows, ys):
        x1, x2 = x1 / y, x2 / y
        a11, a12, a22, b1, b2 = a11 + x1 * x1, a12 + x1 * x2, a22 + x2 * x2, b1 + x1, b2 + x2
    det = a11 * a22 - a12 * a12
    if len(rows) >= 2 and abs(det) > 1e-12 * a11 * a22:
        u, v = (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det
        if u > 0 and v >= 0:
            return u, v
    return b1 / a11, 0.0  # one constant (v = 0) when two are not identifiable or v < 0


def fit(ms: list[Measurement], base: Constants | None = None) -> Constants:
    """Fit 1/R_mm and c_step to step times (head and loss subtracted at their own measured rates), then
    act and c0 to peak memory (when measured)."""
    base = base or Constants(r_mm=400e12)
    rows, ys = [], []
    for mm in ms:
        s = mm.shape
        g = base.gamma if mm.gamma is None else mm.gamma
        known = mm.tokens * (6.0 * s.hidden * s.vocab / base.r_head + g * s.vocab + base.beta * s.hidden * s.layers)
        known += base.loss_t0 if mm.gamma is None else 0.0
        rows.append((mm.tokens * s.layers * layer_flops_per_token(s, mm.seq), 1.0))
        ys.append(max(mm.seconds - known, 1e-9))
    inv_r, c_step = _lstsq2(rows, ys)
    c = dataclasses.replace(base, r_mm=1.0 / inv_r, c_step=c_step)
    mem = [mm for mm in ms if mm.peak_bytes]
    if mem:
        rows, ys = [], []
        zero = dataclasses.replace(c, act=0.0, c0=0.0)
        for mm in mem:
            fixed = peak_memory_bytes(mm.shape, mm.tokens, zero, optimizer=mm.optimizer, logit_bytes=mm.logit_bytes)
            rows.append((mm.shape.hidden * mm.shape.layers * mm.tokens, 1.0))
            ys.append(max(mm.peak_bytes - fixed, 1.0))
        act, c0 = _lstsq2(rows, ys)
        c = dataclasses.replace(c, act=act, c0=c0)
    return c


def _row(m: Measurement, c: Constants, held_out: str) -> dict:
    pred = fwd_bwd_seconds(m.shape, m.tokens, m.seq, c, gamma=m.gamma)
    row = {"held_out": held_out, "shape": m.shape.name, "label": m.label, "tokens": m.tokens, "seq": m.seq,
           "measured_ms": 1e3 * m.seconds, "predicted_ms": 1e3 * pred, "time_err": pred / m.seconds - 1.0}
    if m.peak_bytes:
        pm = peak_memory_bytes(m.shape, m.tokens, c, optimizer=m.optimizer, logit_bytes=m.logit_bytes)
        row |= {"measured_gib": m.peak_bytes / GiB, "predicted_gib": pm / GiB, "mem_err": pm / m.peak_bytes - 1}
    return row


def leave_one_out(ms: list[Measurement], base: Constants | None = None) -> list[dict]:
    """Predict each group from constants fitted on the others: groups are shapes when several were measured,
    single configurations otherwise. The model's honest error on what was measured."""
    by_shape = len({m.shape.name for m in ms}) > 1
    key = (lambda m: m.shape.name) if by_shape else (lambda m: m.label or f"{m.tokens}x{m.seq}")
    out = []
    for k in dict.fromkeys(key(m) for m in ms):
        train = [m for m in ms if key(m) != k]
        if not train:
            continue
        c = fit(train, base)
        out += [_row(m, c, k) for m in ms if key(m) == k]
    return out


# ----------------------------------------------------------------------------------------------- measured (H100)
# The H100 measurements that exist for this project (2026-11-23; H100 80GB HBM3, one GPU). No H100 number of
# the trainer's Megatron path exists: benchmarks/reports/policy_throughput_2026-11-23.md records that no GPU
# was lent to that task. What is here:
#  - ../shared/GPU.md: Qwen2.5-1.5B shape, HF transformers Qwen2 + SDPA, bf16, fwd+bwd, no optimizer;
#    megatron-core stock local spec (unfused attention: B·heads·T² scores) at 1×4,096;
#    LM-head GEMM fwd+bwd at N=16,384 for H=1536 and H=3584 (V=151,936);
#    naive PyTorch loss (no entropy gradient): 15.8 ms / +7.0 GiB at N=4,096, 62.1 ms at N=16,384.
#  - benchmarks/reports/kernel_2026-11-23.md: the fused RED loss, gradient written in the forward (the
#    trainer's path), six (N, V) configurations.
HF_GAMMA = 62.1e-3 / (16384 * 151936)  # HF's fp32 cross entropy ~ GPU.md's naive PyTorch loss (ASSUMED equal)
HF_LOGIT_BYTES = 2.0 + 7.0 * GiB / (4096 * 151936)  # bf16 logits + the naive loss's measured extra memory
GPU_MD_HF = [  # (micro-batch, seq, ms, peak GiB)
    (1, 4096, 138.0, 25.4), (2, 4096, 238.0, 45.0), (1, 8192, 257.0, 45.8)]
GPU_MD_MCORE_STOCK = (1, 4096, 354.0, 61.5)  # unfused attention: outside the model's assumptions
GPU_MD_HEAD = [(16384, 1536, 151936, 32e-3), (16384, 3584, 151936, 73e-3)]  # N, H, V, seconds
KERNEL_LOSS = [  # N, V, ms (red_loss grad_in_forward, kernel report 2026-11-23)
    (4096, 32000, 0.78), (4096, 128256, 1.52), (4096, 151936, 1.83),
    (16384, 32000, 1.72), (16384, 128256, 4.87), (16384, 151936, 5.72)]


def hf_measurements() -> list[Measurement]:
    return [Measurement(shape=SHAPES["1.5B"], tokens=b * t, seq=t, seconds=ms / 1e3, peak_bytes=gib * GiB,
                        gamma=HF_GAMMA, logit_bytes=HF_LOGIT_BYTES, label=f"HF+SDPA {b}×{t}")
            for b, t, ms, gib in GPU_MD_HF]


def fit_head(points=GPU_MD_HEAD) -> float:
    return sum(6.0 * n * h * v for n, h, v, _ in points) / sum(t for *_, t in points)


def fit_loss(points=KERNEL_LOSS) -> tuple[float, float]:
    """gamma (s per logit) and t0 (s per call) of the fused loss: t = gamma·N·V + t0."""
    return _lstsq2([(n * v, 1.0) for n, v, _ in points], [ms / 1e3 for *_, ms in points])


def loo_head_and_loss() -> list[dict]:
    out = []
    for i, (n, h, v, t) in enumerate(GPU_MD_HEAD):
        r = fit_head([p for j, p in enumerate(GPU_MD_HEAD) if j != i])
        pred = 6.0 * n * h * v / r
        out.append({"term": "LM-head GEMM", "config": f"N={n:,} H={h} V={v:,}", "measured_ms": 1e3 * t,
                    "predicted_ms": 1e3 * pred, "time_err": pred / t - 1})
    for i, (n, v, ms) in enumerate(KERNEL_LOSS):
        g, t0 = fit_loss([p for j, p in enumerate(KERNEL_LOSS) if j != i])
        pred = 1e3 * (g * n * v + t0)
        out.append({"term": "fused RED loss", "config": f"N={n:,} V={v:,}", "measured_ms": ms, "predicted_ms": pred,
                    "time_err": pred / ms - 1})
    return out


def calibrated_constants() -> Constants:
    g, t0 = fit_loss()
    base = Constants(r_mm=400e12, r_head=fit_head(), gamma=g, loss_t0=t0)
    return fit(hf_measurements(), base)


# ----------------------------------------------------------------------------------------------- cluster
@dataclass(frozen=True, kw_only=True)
class Layout:
    nodes: int
    tp: int
    pp: int
    tp_infer: int
    mb_tokens: int = 8192  # packed tokens per microbatch

    def world(self, hw: Hardware) -> int:
        return self.nodes * hw.gpus_per_node

    def dp(self, hw: Hardware) -> int:
        return self.world(hw) // (self.tp * self.pp)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One RED step as in the paper: 64 prompts × (7 online + 1 offline), 8k response limit."""

    prompts: int = 64
    group: int = 8
    online: int = 7
    prompt_len: int = 256
    resp_mean: int = 2500  # the paper's RED LEN is ~2,500 tokens
    resp_max: int = 8192

    @property
    def seqs(self) -> int:
        return self.prompts * self.group

    @property
    def tokens(self) -> int:
        return self.seqs * (self.prompt_len + self.resp_mean)


def _allreduce_s(nbytes: float, n: int, bw: float) -> float:
    return 0.0 if n <= 1 else 2.0 * (n - 1) / n * nbytes / bw


def rollout_seconds(s: Shape, lay: Layout, w: Workload, hw: Hardware, train_static_bytes: float) -> dict:
    engines = lay.world(hw) // lay.tp_infer
    seqs = math.ceil(w.prompts * w.online / engines)
    kv_tok = s.kv_bytes_per_token() / min(lay.tp_infer, s.kv_heads)
    weights = 2.0 * s.params / lay.tp_infer
    kv_budget = hw.hbm_bytes * 0.92 - train_static_bytes - weights - 1.0 * GiB
    if kv_budget <= 0:
        return {"rollout_s": math.inf, "engines": engines, "batch": 0, "kv_budget_gib": kv_budget / GiB}
    batch = max(1, min(seqs, int(kv_budget // (kv_tok * (w.prompt_len + w.resp_mean)))))
    ctx = w.prompt_len + w.resp_mean / 2

    def t_iter(b):
        mem = (weights + b * ctx * kv_tok) / (hw.hbm_bw * hw.eta_bw)
        return mem + (2 * s.layers * hw.alpha if lay.tp_infer > 1 else 0.0)

    tokens = seqs * w.resp_mean
    iters = max(tokens / batch, w.resp_max)
    prefill = seqs * w.prompt_len * 2.0 * s.params / (lay.tp_infer * 0.5 * hw.peak_bf16)
    return {"rollout_s": iters * t_iter(batch) + prefill, "engines": engines, "batch": batch,
            "kv_budget_gib": kv_budget / GiB}


def project(s: Shape, lay: Layout, w: Workload, c: Constants, hw: Hardware = Hardware()) -> dict:
    t, p, d = lay.tp, lay.pp, lay.dp(hw)
    if lay.world(hw) % (t * p) or t > hw.gpus_per_node or d < 1:
        raise ValueError(f"layout {lay} does not tile {lay.world(hw)} GPUs")
    seq = w.prompt_len + w.resp_mean
    tokens_rank = w.tokens / d
    m = max(1, math.ceil(tokens_rank / lay.mb_tokens))
    mb = tokens_rank / m
    # one microbatch on the slowest (last) stage, forward + backward
    layer_tok = layer_flops_per_token(s, seq) / c.r_mm + c.beta * s.hidden
    head_tok = 6.0 * s.hidden * s.vocab / c.r_head + c.gamma * s.vocab
    # per micro-batch: the fitted fixed cost of a forward+backward call and of a loss call (not divided by t)
    compute_mb = mb * ((s.layers / p) * layer_tok + head_tok) / t + c.c_step + c.loss_t0
    tp_mb = (s.layers / p) * 4 * (_allreduce_s(mb * s.hidden * 2.0, t, hw.b_nvl) + (hw.alpha if t > 1 else 0))
    stage_mb = compute_mb + tp_mb
    fwd_bwd = (m + p - 1) * stage_mb
    bubble = (p - 1) / (m + p - 1)
    logp_fwd = fwd_bwd / 3.0  # forward only, no grad: FLOP ratio 2:6 (the bubble included)
    shard = params_per_gpu(s, t, p)
    dp_bw = hw.b_nvl if lay.nodes == 1 or t * p * d <= hw.gpus_per_node else hw.b_ib
    # reduce-scatter of fp32 grads (grad_reduce_in_fp32=True in policy/optim.py) + all-gather of bf16 params
    dp_comm = (d - 1) / d * shard * (4.0 + 2.0) / dp_bw if d > 1 else 0.0
    dp_exposed = (1 - hw.dp_overlap) * dp_comm
    optim = 36.0 * shard / d / hw.hbm_bw
    refit = 2.0 * shard / hw.b_nvl
    mem_train = peak_memory_bytes(s, int(mb), c, t=t, p=p, d=d, m=m)
    static = params_per_gpu(s, t, p) * (2 + 4 + 12 / d) + c.c0
    roll = rollout_seconds(s, lay, w, hw, static)
    train_s = logp_fwd + fwd_bwd + dp_exposed + optim + refit
    step = train_s + roll["rollout_s"]
    gpus = lay.world(hw)
    return {
        "model": s.name, "nodes": lay.nodes, "gpus": gpus, "tp": t, "pp": p, "dp": d, "tp_infer": lay.tp_infer,
        "microbatches": m, "mb_tokens": int(mb), "bubble": bubble,
        "mem_train_gib": mem_train / GiB, "fits": mem_train <= hw.hbm_bytes,
        "fwd_bwd_s": fwd_bwd, "tp_comm_s": (m + p - 1) * tp_mb, "logp_fwd_s": logp_fwd, "dp_exposed_s": dp_exposed,
        "optim_s": optim, "refit_s": refit, "train_s": train_s, **roll, "step_s": step,
        "rollout_share": roll["rollout_s"] / step if math.isfinite(step) else math.nan,
        "train_tok_s_gpu": w.tokens / train_s / gpus,
        "step_tok_s_gpu": w.tokens / step / gpus,
        "train_mfu": w.tokens * model_flops_per_token(s, seq) * (4 / 3) / train_s / gpus / hw.peak_bf16,
    }


# 7B / 32B layouts for 1-8 nodes (the recipes' choices first; alternatives for comparison)
CLUSTER_LAYOUTS = {
    "7B": [Layout(nodes=n, tp=2, pp=1, tp_infer=2) for n in (1, 2, 4, 8)]
          + [Layout(nodes=n, tp=4, pp=1, tp_infer=2) for n in (1, 8)] + [Layout(nodes=1, tp=1, pp=1, tp_infer=1)],
    "32B": [Layout(nodes=n, tp=8, pp=2, tp_infer=4) for n in (2, 4, 8)]
           + [Layout(nodes=n, tp=8, pp=1, tp_infer=4) for n in (1, 2, 4, 8)]
           + [Layout(nodes=n, tp=4, pp=4, tp_infer=4) for n in (2, 8)],
}


# ----------------------------------------------------------------------------------------------- I/O
def load_policy_measurements(path: Path, impl: str | None = "mcore_sdpa_red") -> list[Measurement]:
    """benchmarks/policy_throughput.py's JSON ({"runs": [{impl, shape, batch, seq, tokens, ms, peak_gib}]}):
    one Measurement per successful run of ``impl`` (the trainer's path by default; None: every impl)."""
    data = json.loads(Path(path).read_text())
    recs = data.get("runs", data.get("results", [])) if isinstance(data, dict) else data
    names = {k.lower(): k for k in SHAPES}
    out = []
    for r in recs:
        ms = r.get("ms", r.get("ms_per_step"))
        if r.get("error") or not ms or (impl and r.get("impl", impl) != impl):
            continue
        name = names.get(str(r.get("shape", "")).lower().replace("qwen2.5-", ""))
        if name is None:
            continue
        tokens = int(r.get("tokens", r.get("tokens_per_step", 0)))
        seq = int(r.get("seq", r.get("seq_len", tokens)))
        peak = r.get("peak_gib")
        out.append(Measurement(shape=SHAPES[name], tokens=tokens, seq=seq, seconds=float(ms) / 1e3,
                               peak_bytes=float(peak) * GiB if peak else None, optimizer=bool(r.get("optimizer", False)),
                               label=f"{r.get('impl', '')} {r.get('batch', '?')}×{seq}"))
    return out


def _md_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = ""
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt))
        body += "| " + " | ".join(cells) + " |\n"
    return head + body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy-json", default=None, help="policy_throughput.py JSON with H100 runs of the trainer's "
                    "Megatron path (default: the newest reports/policy_throughput_*.json, if any)")
    ap.add_argument("--impl", default="mcore_sdpa_red", help="which implementation's runs to fit (policy_throughput)")
    ap.add_argument("--report", default=None, help="markdown report path (default reports/projection_<date>.md)")
    ap.add_argument("--json", default=None, help="JSON output path (default reports/projection_<date>.json)")
    ap.add_argument("--async", dest="async_", action="store_true", help="project asynchronous (one step off, "
                    "disaggregated) steps against the synchronous ones: reports/projection_async_<date>.md/json "
                    "(benchmarks/projection_async.py)")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent
    date = datetime.date.today().isoformat()
    src = Path(args.policy_json) if args.policy_json else max(
        (here / "reports").glob("policy_throughput_*.json"), default=None, key=lambda p: p.stat().st_mtime)
    policy_ms = load_policy_measurements(src, args.impl) if src else []
    g, t0 = fit_loss()
    base = Constants(r_mm=400e12, r_head=fit_head(), gamma=g, loss_t0=t0)
    hf = hf_measurements()
    out: dict = {"date": date, "hardware": dataclasses.asdict(Hardware()), "workload": dataclasses.asdict(Workload()),
                 "loo_terms": loo_head_and_loss(), "loo_hf": leave_one_out(hf, base)}
    if policy_ms:  # the trainer's own path measured on an H100: fit on it (all shapes), check leave-one-shape-out
        c = fit(policy_ms, base)
        out |= {"calibrated_on": f"{src} ({args.impl})", "loo_policy": leave_one_out(policy_ms, base)}
    else:
        c = fit(hf, base)
        out["calibrated_on"] = "GPU.md HF transformers + SDPA (1.5B), H100"
    b_, t_, ms_, gib_ = GPU_MD_MCORE_STOCK
    out["out_of_model"] = [_row(Measurement(shape=SHAPES["1.5B"], tokens=b_ * t_, seq=t_, seconds=ms_ / 1e3,
                                            peak_bytes=gib_ * GiB, gamma=HF_GAMMA, logit_bytes=4.0,
                                            label=f"megatron stock local spec {b_}×{t_}"), c, "-")]
    out["fit"] = dataclasses.asdict(c)
    if args.async_:
        return _async_main(args, here, date, c)
    out["projection"] = [project(SHAPES[name], lay, Workload(), c) for name, lays in CLUSTER_LAYOUTS.items()
                         for lay in lays]
    json_path = Path(args.json or here / "reports" / f"projection_{date}.json")
    json_path.write_text(json.dumps(out, indent=1, default=str))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_util, however this module was loaded
    from bench_util import rows_beside, run_meta

    rows_beside(json_path, out["projection"], run_meta(benchmark="projection"), config=out["fit"])
    report = Path(args.report or here / "reports" / f"projection_{date}.md")
    report.write_text(render_report(out, c))
    print(report.read_text())
    return 0


def _async_main(args, here: Path, date: str, c: Constants) -> int:
    sys.path.insert(0, str(here))
    import projection_async

    rows = projection_async.async_table(sys.modules[__name__], c)
    partial = projection_async.async_table(sys.modules[__name__], c, partial=True)
    Path(args.json or here / "reports" / f"projection_async_{date}.json").write_text(
        json.dumps({"date": date, "fit": dataclasses.asdict(c), "hardware": dataclasses.asdict(Hardware()),
                    "workload": dataclasses.asdict(Workload()), "rows": rows, "partial_rollouts": partial},
                   indent=1, default=str))
    report = Path(args.report or here / "reports" / f"projection_async_{date}.md")
    report.write_text(projection_async.render(rows, date, sys.modules[__name__], partial))
    print(report.read_text())
    return 0


def _err_line(rows: list[dict], key: str, what: str) -> str:
    e = [abs(r[key]) for r in rows if key in r]
    return f"{what}: mean |error| {sum(e) / len(e):.1%}, max {max(e):.1%} over {len(e)} configurations." if e else ""


def render_report(out: dict, c: Constants) -> str:
    hw, w = Hardware(), Workload()
    cols = [("held_out", "held out", ""), ("label", "configuration", ""), ("measured_ms", "measured ms", ".1f"),
            ("predicted_ms", "predicted ms", ".1f"), ("time_err", "time error", "+.1%"),
            ("measured_gib", "measured GiB", ".1f"), ("predicted_gib", "predicted GiB", ".1f"),
            ("mem_err", "memory error", "+.1%")]
    lines = [f"# RED step projection to 8×H100 clusters ({out['date']})", "",
             "Model, formulas and assumptions: `benchmarks/projection.py` (docstring). Inputs: every H100 "
             "measurement this project has (H100 80GB HBM3, one GPU, 2026-11-23): ../shared/GPU.md (policy "
             "forward+backward of the Qwen2.5-1.5B shape with HF transformers + SDPA and with megatron-core's stock "
             "local spec; LM-head GEMMs) and benchmarks/reports/kernel_2026-11-23.md (the fused RED loss). "
             "**No H100 measurement of the trainer's Megatron path exists**: benchmarks/reports/"
             "policy_throughput_2026-11-23.md records that no GPU was lent to that task, and none to this one "
             "(`device` status: no machine could be started). The layer-stack rate is therefore calibrated on "
             f"{out['calibrated_on']}; rerun `python benchmarks/projection.py --policy-json <policy_throughput.json>` "
             "once the Megatron path is measured. Everything multi-GPU below is projected, not measured.", "",
             "## Fitted constants", "",
             f"- R_mm, effective FLOP/s of the layer stack: {c.r_mm / 1e12:.0f} TFLOP/s ({c.r_mm / hw.peak_bf16:.0%} of "
             f"the {hw.peak_bf16 / 1e12:.0f} TFLOP/s bf16 peak); fixed cost per forward+backward call c_step "
             f"{c.c_step * 1e3:.1f} ms (both from the HF rows)",
             f"- LM-head GEMM rate {c.r_head / 1e12:.0f} TFLOP/s (GPU.md, two hidden sizes)",
             f"- fused RED loss: {c.gamma * 1e12:.2f} ps per logit + {c.loss_t0 * 1e3:.2f} ms per call (kernel report, "
             "six (N, V) configurations)",
             f"- activations {c.act:.1f} bytes per token·hidden·layer, fixed memory {c.c0 / GiB:.2f} GiB (HF rows' peak "
             "memory, with the HF loss's measured 14 B/logit taken out; the trainer's fused loss holds 2 B/logit)", "",
             "## Error on every measured configuration (leave-one-out)", "",
             "Each row is predicted from constants fitted *without* it.", "",
             "Policy forward+backward, 1.5B shape, HF transformers + SDPA (GPU.md):", "",
             _md_table(out["loo_hf"], cols[1:]),
             _err_line(out["loo_hf"], "time_err", "Step time") + " " + _err_line(out["loo_hf"], "mem_err", "Peak memory"),
             ""]
    if out.get("loo_policy"):
        lines += ["The trainer's Megatron path (policy_throughput.py), leave-one-shape-out:", "",
                  _md_table(out["loo_policy"], cols), _err_line(out["loo_policy"], "time_err", "Step time"), ""]
    lines += ["The head and loss terms (each point from a fit on the others):", "",
              _md_table(out["loo_terms"], [("term", "term", ""), ("config", "configuration", ""),
                                           ("measured_ms", "measured ms", ".2f"), ("predicted_ms", "predicted ms", ".2f"),
                                           ("time_err", "error", "+.1%")]),
              _err_line(out["loo_terms"], "time_err", "Head and loss"), "",
              "Outside the model's assumptions (shown, not fitted): megatron-core's stock local spec materialises "
              "B·heads·T² attention scores (no SDPA/flash), which the model does not describe:", "",
              _md_table(out["out_of_model"], cols[1:]),
              "This is why the trainer uses its own SDPA core attention (red_megatron/policy/sdpa_attention.py).", "",
              "## Projection: 7B and 32B on 1–8 nodes of 8×H100", "",
              f"Workload: one RED step as in the paper, {w.prompts} prompts × {w.group} ({w.online} online + 1 offline), "
              f"prompt {w.prompt_len} tokens, mean response {w.resp_mean} (the paper's RED LEN ≈ 2,500), longest "
              f"{w.resp_max}: {w.tokens / 1e6:.2f} M training tokens a step, packed 8,192-token micro-batches. "
              "The first rows of each model are the recipes' layouts (configs/qwen25.py).", "",
              _md_table(out["projection"], [
                  ("model", "model", ""), ("nodes", "nodes", "d"), ("tp", "TP", "d"), ("pp", "PP", "d"),
                  ("dp", "DP", "d"), ("tp_infer", "vLLM TP", "d"), ("mem_train_gib", "train GiB/GPU", ".1f"),
                  ("fits", "fits 80 GB", ""), ("bubble", "PP bubble", ".1%"), ("tp_comm_s", "TP comm s", ".1f"),
                  ("train_s", "train s", ".1f"), ("rollout_s", "rollout s", ".1f"),
                  ("rollout_share", "rollout share", ".0%"), ("step_s", "step s", ".1f"),
                  ("train_tok_s_gpu", "train tok/s/GPU", ".0f"), ("step_tok_s_gpu", "step tok/s/GPU", ".0f"),
                  ("train_mfu", "train MFU", ".0%")]),
              "Reading it: the training part scales almost linearly with nodes (data parallel; the distributed "
              "optimizer moves 6 bytes per parameter of the local shard a step, small next to the compute), while "
              "the rollout does not: a step waits for its longest response (8,192 decode iterations) and every "
              "iteration reads the engine's weights at least once, so more engines mean fewer sequences each but "
              "not fewer iterations. The rollout share therefore grows with the node count: past ~2 nodes for 7B "
              "and ~4 for 32B, more GPUs buy little step time unless responses are capped, generation overlaps "
              "training (one step off-policy), or long samples are cut. 7B at TP=1 and 32B on one node do not fit.",
              "", "## Assumptions (not measured here)", "",
              "- One measured shape: the layer-stack rate R_mm is taken as shape-independent. Larger hidden sizes "
              "usually run GEMMs closer to peak, so 7B/32B compute is likely over-estimated (conservative).",
              "- HF's cross entropy is costed as GPU.md's naive PyTorch loss (62.1 ms at 16,384 × 151,936) when "
              "the HF rows are fitted; the projection uses the fused kernel's measured cost instead.",
              f"- NVLink all-reduce bus bandwidth {hw.b_nvl / 1e9:.0f} GB/s, inter-node {hw.b_ib / 1e9:.0f} GB/s per "
              f"GPU, {hw.alpha * 1e6:.0f} µs per collective; TP collectives not overlapped; DP not overlapped (the "
              "policy's DDP runs overlap_grad_reduce=False, grads reduced in fp32).",
              f"- Rollout decode at {hw.eta_bw:.0%} of HBM bandwidth; KV cache = what the colocated training state "
              "leaves of 92% of HBM. vLLM cannot run on the GPU machine here: no rollout number is measured.",
              "- The old-log-prob pass costs 1/3 of a forward+backward; optimizer 36 B/param of the local shard at "
              "HBM speed; refit = one NVLink copy of the local weights; c_step is paid per micro-batch.",
              "- Activation memory: no recomputation; 1F1B holds min(m, p) micro-batches on the first stage.",
              "- The TP, PP and DP terms are textbook formulas no measurement here could check (one GPU at most); "
              "the leave-one-out errors above cover the single-GPU compute, head, loss and memory terms only."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
