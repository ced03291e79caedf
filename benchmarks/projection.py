"""Projection of RED step time and memory from measured per-layer costs to 8×H100 clusters.

Why a model: the GPU machine here is one H100, so multi-node numbers cannot be measured; they
are *projected* from constants fitted on the single-GPU measurements of
benchmarks/policy_throughput.py, with every assumption stated below and the fit's error on
the measured configurations reported (leave-one-out over model shapes).

The model (per optimiser step; P = parameters, L layers, h hidden, V vocabulary, T sequence
length, t/p/d = tensor/pipeline/data parallel sizes, m = microbatches per DP rank):

Compute, one GPU, no parallelism (fitted):
    t_layer(token) = F_layer / R_mm + beta · h          F_layer = 6·P_layer + 6·h·T (causal attention)
    t_head(token)  = 6·h·V / R_head + gamma · V          (LM-head GEMMs + the fused loss over V logits)
  R_mm (effective matmul FLOP/s of the layer stack) and beta (memory-bound time per hidden element:
  norms, activations, rotary, residuals) are least-squares fits to measured step times; R_head and
  gamma come from the kernel measurements in ../shared/GPU.md when the policy benchmark does not
  separate the head.
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


SHAPES = {s.name: s for s in (
    Shape(name="0.5B", layers=24, hidden=896, ffn=4864, heads=14, kv_heads=2, vocab=151936, tied=True),
    Shape(name="1.5B", layers=28, hidden=1536, ffn=8960, heads=12, kv_heads=2, vocab=151936, tied=True),
    Shape(name="3B", layers=36, hidden=2048, ffn=11008, heads=16, kv_heads=2, vocab=151936, tied=True),
    Shape(name="7B", layers=28, hidden=3584, ffn=18944, heads=28, kv_heads=4, vocab=152064, tied=False),
    Shape(name="14B", layers=48, hidden=5120, ffn=13824, heads=40, kv_heads=8, vocab=152064, tied=False),
    Shape(name="32B", layers=64, hidden=5120, ffn=27648, heads=40, kv_heads=8, vocab=152064, tied=False),
)}


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
    beta: float  # s per token per hidden element per layer (fitted)
    r_head: float = 720e12  # LM-head GEMM FLOP/s, fwd+bwd at N=16,384 (../shared/GPU.md, H100)
    gamma: float = 4.7e-3 / (16384 * 151936)  # fused RED loss s per logit (GPU.md: 4.7 ms at 16,384×151,936)
    act: float = 34.0  # bytes per token per hidden element per layer (Korthikanti et al., no recompute)
    c0: float = 2.0 * GiB  # context + NCCL + allocator slack


def layer_flops_per_token(s: Shape, seq: int) -> float:
    matmul = s.params_layer - (2 * s.hidden + s.hidden + 2 * s.kv_heads * s.head_dim)  # no norms, biases
    return 6.0 * matmul + 6.0 * s.hidden * seq


def model_flops_per_token(s: Shape, seq: int) -> float:
    """MFU numerator as in GPU.md: 6·params + 6·layers·hidden·T."""
    return 6.0 * s.params + 6.0 * s.layers * s.hidden * seq


def fwd_bwd_seconds(s: Shape, tokens: int, seq: int, c: Constants) -> float:
    """One GPU, whole model, forward + backward over ``tokens`` tokens of sequences of length ``seq``."""
    per_tok = s.layers * (layer_flops_per_token(s, seq) / c.r_mm + c.beta * s.hidden)
    per_tok += 6.0 * s.hidden * s.vocab / c.r_head + c.gamma * s.vocab
    return tokens * per_tok


def params_per_gpu(s: Shape, t: int = 1, p: int = 1) -> float:
    """The largest stage's share: layers/p plus one V×h matrix (the embedding on the first stage, the head
    (or, tied, the embedding's copy) on the last), or both when p == 1 and the head is untied."""
    vocab_mats = 2 if (p == 1 and not s.tied) else 1
    return (s.layers * s.params_layer / p + vocab_mats * s.vocab * s.hidden) / t


def peak_memory_bytes(s: Shape, tokens_mb: int, c: Constants, *, t=1, p=1, d=1, m=1, optimizer=True) -> float:
    states = params_per_gpu(s, t, p) * ((2 + 4 + 12 / d) if optimizer else (2 + 2))  # w/o optimizer: bf16 w + g
    acts = c.act * s.hidden * (s.layers / p) * tokens_mb * min(m, p) / t
    logits = 2.0 * tokens_mb * s.vocab / t
    return states + acts + logits + c.c0


# ----------------------------------------------------------------------------------------------- fit
@dataclass(kw_only=True)
class Measurement:
    shape: Shape
    tokens: int  # tokens per step (micro-batch × sequence length)
    seq: int
    seconds: float  # forward + backward step time
    peak_bytes: float | None = None
    optimizer: bool = False  # did the measured step include the optimizer's state in memory?
    label: str = ""


def _lstsq2(rows: list[tuple[float, float]], ys: list[float]) -> tuple[float, float]:
    """Non-negative 2-variable least squares on relative error (each row scaled by 1/y)."""
    a11 = a12 = a22 = b1 = b2 = 0.0
    for (x1, x2), y in zip(rows, ys):
        x1, x2 = x1 / y, x2 / y
        a11, a12, a22, b1, b2 = a11 + x1 * x1, a12 + x1 * x2, a22 + x2 * x2, b1 + x1, b2 + x2
    det = a11 * a22 - a12 * a12
    if len(rows) >= 2 and abs(det) > 1e-30 * max(a11 * a22, 1e-300):
        u, v = (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det
        if u > 0 and v >= 0:
            return u, v
    return b1 / a11, 0.0  # one constant (v = 0) when two are not identifiable or v < 0


def fit(ms: list[Measurement], base: Constants | None = None) -> Constants:
    """Fit 1/R_mm and beta to step times, then act and c0 to peak memory (when measured)."""
    base = base or Constants(r_mm=400e12, beta=0.0)
    rows, ys = [], []
    for mm in ms:
        head = mm.tokens * (6.0 * mm.shape.hidden * mm.shape.vocab / base.r_head + base.gamma * mm.shape.vocab)
        rows.append((mm.tokens * mm.shape.layers * layer_flops_per_token(mm.shape, mm.seq),
                     mm.tokens * mm.shape.layers * mm.shape.hidden))
        ys.append(max(mm.seconds - head, 1e-9))
    inv_r, beta = _lstsq2(rows, ys)
    c = dataclasses.replace(base, r_mm=1.0 / inv_r, beta=beta)
    mem = [mm for mm in ms if mm.peak_bytes]
    if mem:
        rows, ys = [], []
        for mm in mem:
            zero = dataclasses.replace(c, act=0.0, c0=0.0)
            fixed = peak_memory_bytes(mm.shape, mm.tokens, zero, optimizer=mm.optimizer)
            rows.append((mm.shape.hidden * mm.shape.layers * mm.tokens, 1.0))
            ys.append(max(mm.peak_bytes - fixed, 1.0))
        act, c0 = _lstsq2(rows, ys)
        c = dataclasses.replace(c, act=act, c0=c0)
    return c


def leave_one_out(ms: list[Measurement], base: Constants | None = None) -> list[dict]:
    """Fit on all shapes but one, predict that shape's measurements: the model's honest error."""
    out = []
    for name in sorted({m.shape.name for m in ms}, key=lambda n: SHAPES.get(n, ms[0].shape).params):
        train = [m for m in ms if m.shape.name != name]
        if len({m.shape.name for m in train}) < 1:
            continue
        c = fit(train, base)
        for m in (m for m in ms if m.shape.name == name):
            pred = fwd_bwd_seconds(m.shape, m.tokens, m.seq, c)
            row = {"shape": name, "label": m.label, "tokens": m.tokens, "seq": m.seq,
                   "measured_ms": 1e3 * m.seconds, "predicted_ms": 1e3 * pred,
                   "time_err": pred / m.seconds - 1.0}
            if m.peak_bytes:
                pm = peak_memory_bytes(m.shape, m.tokens, c, optimizer=m.optimizer)
                row |= {"measured_gib": m.peak_bytes / GiB, "predicted_gib": pm / GiB, "mem_err": pm / m.peak_bytes - 1}
            out.append(row)
    return out


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
    compute_mb = mb * ((s.layers / p) * layer_tok + head_tok) / t
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


# ----------------------------------------------------------------------------------------------- CPU check
CPU_SHAPES = [  # tiny Qwen2-like shapes: the model's form checked on a second device (fp32, this CPU)
    Shape(name="cpu-h128", layers=2, hidden=128, ffn=384, heads=4, kv_heads=2, vocab=1024, tied=False),
    Shape(name="cpu-h256", layers=2, hidden=256, ffn=768, heads=4, kv_heads=2, vocab=1024, tied=False),
    Shape(name="cpu-h384", layers=3, hidden=384, ffn=1152, heads=6, kv_heads=2, vocab=2048, tied=False),
    Shape(name="cpu-h512", layers=2, hidden=512, ffn=1536, heads=8, kv_heads=2, vocab=2048, tied=False),
    Shape(name="cpu-h768", layers=2, hidden=768, ffn=2048, heads=12, kv_heads=4, vocab=2048, tied=False),
]


def measure_cpu(shapes=CPU_SHAPES, seq: int = 256, batch: int = 2, reps: int = 5) -> list[Measurement]:
    """Forward + backward of a random-weight transformers Qwen2 on this CPU, median of ``reps``."""
    import statistics
    import time

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    out = []
    for s in shapes:
        cfg = Qwen2Config(hidden_size=s.hidden, intermediate_size=s.ffn, num_hidden_layers=s.layers,
                          num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, vocab_size=s.vocab,
                          tie_word_embeddings=s.tied, max_position_embeddings=seq, attn_implementation="sdpa")
        model = Qwen2ForCausalLM(cfg).float()
        ids = torch.randint(0, s.vocab, (batch, seq))
        times = []
        for i in range(reps + 1):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            if i:  # the first pass warms up
                times.append(time.perf_counter() - t0)
        out.append(Measurement(shape=s, tokens=batch * seq, seq=seq, seconds=statistics.median(times),
                               label=f"cpu fp32 {batch}×{seq}"))
    return out


def fit_tied(ms: list[Measurement]) -> Constants:
    """CPU variant: one GEMM rate for layers and head (R_head = R_mm), no separate loss-kernel term."""
    c = Constants(r_mm=1e11, beta=0.0, gamma=0.0)
    for _ in range(20):  # fixed point: the head's share is computed with the current R_mm
        c = fit(ms, dataclasses.replace(c, r_head=c.r_mm))
    return dataclasses.replace(c, r_head=c.r_mm)


def leave_one_out_tied(ms: list[Measurement]) -> list[dict]:
    out = []
    for s in {m.shape.name: m.shape for m in ms}.values():
        c = fit_tied([m for m in ms if m.shape.name != s.name])
        for m in (m for m in ms if m.shape.name == s.name):
            pred = fwd_bwd_seconds(m.shape, m.tokens, m.seq, c)
            out.append({"shape": s.name, "label": m.label, "tokens": m.tokens, "seq": m.seq,
                        "measured_ms": 1e3 * m.seconds, "predicted_ms": 1e3 * pred, "time_err": pred / m.seconds - 1})
    return out


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
    ap.add_argument("--policy-json", default=None, help="policy_throughput JSON (default: the newest in reports/)")
    ap.add_argument("--impl", default="mcore_sdpa_red", help="which implementation's runs to fit (policy_throughput)")
    ap.add_argument("--cpu", action="store_true", help="also time tiny shapes on this CPU and fit them (noisy on "
                    "a shared machine)")
    ap.add_argument("--report", default=None, help="markdown report path (default reports/projection_<date>.md)")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent
    date = datetime.date.today().isoformat()
    src = Path(args.policy_json) if args.policy_json else max(
        (here / "reports").glob("policy_throughput_*.json"), default=None, key=lambda p: p.stat().st_mtime)
    ms = load_policy_measurements(src, args.impl) if src else []
    out: dict = {"date": date, "source": str(src) if src else None, "hardware": dataclasses.asdict(Hardware()),
                 "workload": dataclasses.asdict(Workload())}
    if len({m.shape.name for m in ms}) >= 2:
        c = fit(ms)
        loo = leave_one_out(ms)
        out["fit"] = dataclasses.asdict(c)
        out["loo"] = loo
    else:
        c = Constants(r_mm=0.45 * Hardware().peak_bf16, beta=0.0)
        out["fit"], out["loo"] = None, []
        print(f"fewer than two measured shapes in {src}: using an assumed R_mm = 45% of peak", file=sys.stderr)
    if args.cpu:
        cms = measure_cpu()
        out["cpu_loo"] = leave_one_out_tied(cms)
        out["cpu_fit"] = dataclasses.asdict(fit_tied(cms))
    proj = [project(SHAPES[name], lay, Workload(), c) for name, lays in CLUSTER_LAYOUTS.items() for lay in lays]
    out["projection"] = proj
    json_path = here / "reports" / f"projection_{date}.json"
    json_path.write_text(json.dumps(out, indent=1, default=str))
    report = Path(args.report or here / "reports" / f"projection_{date}.md")
    report.write_text(render_report(out, c))
    print(report.read_text())
    return 0


def render_report(out: dict, c: Constants) -> str:
    hw, w = Hardware(), Workload()
    lines = [f"# RED step projection to 8×H100 clusters ({out['date']})", "",
             "Model, assumptions and fit: `benchmarks/projection.py` (its docstring states every formula). "
             f"Measured input: `{out['source']}` (single H100, see that report for the device and versions). "
             "Everything multi-GPU below is projected, not measured.", ""]
    lines += ["## Fitted constants", "",
              f"- R_mm (effective layer-stack FLOP/s): {c.r_mm / 1e12:.0f} TFLOP/s ({c.r_mm / hw.peak_bf16:.0%} of the "
              f"{hw.peak_bf16 / 1e12:.0f} TFLOP/s bf16 peak)",
              f"- beta (memory-bound time per token·hidden·layer): {c.beta * 1e12:.2f} ps",
              f"- R_head {c.r_head / 1e12:.0f} TFLOP/s and the fused-loss cost {c.gamma * 1e12:.2f} ps per logit "
              "(from ../shared/GPU.md kernel measurements on the H100)",
              f"- activations: {c.act:.1f} bytes per token·hidden·layer; fixed overhead c0 {c.c0 / GiB:.2f} GiB", ""]
    if out["loo"]:
        errs = [abs(r["time_err"]) for r in out["loo"]]
        merrs = [abs(r["mem_err"]) for r in out["loo"] if "mem_err" in r]
        lines += ["## Error on the measured configurations (leave-one-shape-out)", "",
                  "Each shape's points are predicted from constants fitted on the *other* shapes only.", "",
                  _md_table(out["loo"], [("shape", "shape", ""), ("label", "config", ""), ("tokens", "tokens", "d"),
                                         ("measured_ms", "measured ms", ".1f"), ("predicted_ms", "predicted ms", ".1f"),
                                         ("time_err", "time error", "+.1%"), ("measured_gib", "measured GiB", ".1f"),
                                         ("predicted_gib", "predicted GiB", ".1f"), ("mem_err", "memory error", "+.1%")]),
                  f"Step time: mean |error| {sum(errs) / len(errs):.1%}, max {max(errs):.1%} over {len(errs)} "
                  "configurations." + (f" Peak memory: mean |error| {sum(merrs) / len(merrs):.1%}, max "
                                      f"{max(merrs):.1%}." if merrs else ""), ""]
    if out.get("cpu_loo"):
        errs = [abs(r["time_err"]) for r in out["cpu_loo"]]
        lines += ["## The same model on this CPU (tiny fp32 shapes, leave-one-out)", "",
                  _md_table(out["cpu_loo"], [("shape", "shape", ""), ("measured_ms", "measured ms", ".1f"),
                                             ("predicted_ms", "predicted ms", ".1f"), ("time_err", "error", "+.1%")]),
                  f"Mean |error| {sum(errs) / len(errs):.1%}.", ""]
    lines += ["## Projection: 7B and 32B on 1–8 nodes", "",
              f"Workload: one RED step of the paper, {w.prompts} prompts × {w.group} ({w.online} online + 1 offline), "
              f"prompt {w.prompt_len} tokens, mean response {w.resp_mean} (the paper's RED LEN ≈ 2,500), longest "
              f"{w.resp_max}: {w.tokens / 1e6:.2f} M training tokens a step; packed micro-batches of 8,192 tokens.",
              "",
              _md_table(out["projection"], [
                  ("model", "model", ""), ("nodes", "nodes", "d"), ("tp", "TP", "d"), ("pp", "PP", "d"), ("dp", "DP", "d"),
                  ("tp_infer", "vLLM TP", "d"), ("mem_train_gib", "train GiB/GPU", ".1f"), ("fits", "fits 80 GB", ""),
                  ("bubble", "PP bubble", ".1%"), ("tp_comm_s", "TP comm s", ".1f"), ("train_s", "train s", ".1f"),
                  ("rollout_s", "rollout s", ".1f"), ("rollout_share", "rollout share", ".0%"),
                  ("step_s", "step s", ".1f"), ("train_tok_s_gpu", "train tok/s/GPU", ".0f"),
                  ("step_tok_s_gpu", "step tok/s/GPU", ".0f"), ("train_mfu", "train MFU", ".0%")]),
              "Reading it: the training part scales almost linearly with nodes (DP, little communication at "
              "these sizes: the distributed optimizer moves 6 bytes/param of the local shard per step), while the "
              "rollout does not: a step waits for its longest response (8,192 decode iterations), and each "
              "iteration costs at least one read of the engine's weights, so more engines mean fewer sequences "
              "each but not fewer iterations. The rollout share grows with the node count; beyond ~2 nodes for "
              "7B, more GPUs buy little step time unless responses are capped, generation is made asynchronous "
              "(off-policy by one step), or long samples are cut.", "",
              "## Assumptions (not measured here)", "",
              f"- NVLink all-reduce bus bandwidth {hw.b_nvl / 1e9:.0f} GB/s, inter-node {hw.b_ib / 1e9:.0f} GB/s per GPU, "
              f"{hw.alpha * 1e6:.0f} µs per collective; TP collectives not overlapped; DP not overlapped "
              "(the policy's DDP runs overlap_grad_reduce=False).",
              f"- Rollout decode at {hw.eta_bw:.0%} of HBM bandwidth, KV cache = what the colocated training state "
              "leaves of 92% of HBM; vLLM cannot run on the GPU machine here, so no rollout number is measured.",
              "- The old-log-prob pass costs 1/3 of a forward+backward; optimizer 36 B/param of the local shard at HBM "
              "speed; refit = one NVLink copy of the local weights.",
              "- Activation memory assumes no recomputation and 1F1B holding min(m, p) micro-batches on the first "
              "stage; the fitted `act` absorbs the implementation's actual footprint at TP=1.",
              "- TP, PP and DP terms are textbook formulas that no measurement here could check (one GPU); "
              "the leave-one-out error above covers only the single-GPU compute and memory terms."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
