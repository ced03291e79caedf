"""Mixture of experts: RED step time and memory per GPU of Qwen3-30B-A3B on 8×H100 nodes, by EP and PP.

projection.py's step model (its calibrated constants: layer-stack FLOP/s, LM head and loss, activation
bytes, fixed memory; its rollout model) with what an MoE layer changes:

- compute: a token pays the attention and router at R_mm and only its top-k experts' GEMMs, at R_moe
  (6·k·3·h·f_e FLOPs a token and layer). R_moe is fitted on moe_layer_bench.py's megatron-core rows
  (``--moe-json``: its JSON or gpu_pending.sh's summary.json; the attention at R_mm is subtracted first);
  without a measurement it is ASSUMED to be R_mm / 2 (sequential expert GEMMs of ~tokens·k/E rows each);
- expert parallelism EP: the experts' weights are split over EP ranks, their optimizer states over the
  expert-data-parallel ranks DP/EP (the rest over DP); every routed layer sends each token's k copies
  to their experts and back, forward and backward: 4 all-to-alls of k·h·2 bytes a token and layer, a
  fraction (EP−1)/EP leaving the rank, over NVLink while TP·EP ≤ 8 (megatron puts the EP ranks next to
  each other), over InfiniBand beyond; not overlapped (ASSUMED, as the DP traffic);
- balanced routing (ASSUMED): every EP rank's experts receive its share of the tokens (RL runs without the
  auxiliary loss, docs/MOE.md: a skewed router makes the busiest rank the step's pace);
- activations: projection.py's bytes per token·hidden·layer, or the value the measurement's peak memory
  gives (peak − 2 × weights: bf16 weights and gradients, no optimizer), whichever is known;
- rollout: projection.rollout_seconds on the total parameters (a decode batch of B sequences touches
  B·k expert slots: every expert once B·k ≥ E, so each iteration reads all the weights).

    python benchmarks/projection_moe.py [--moe-json summary.json] [--report]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from projection import GiB, Constants, Hardware, Layout, Shape, Workload, _allreduce_s, \
    calibrated_constants, rollout_seconds  # noqa: E402

REPORTS = Path(__file__).resolve().parent / "reports"
ASSUMED_MOE_EFFICIENCY = 0.5  # R_moe / R_mm without a measurement


@dataclass(frozen=True, kw_only=True)
class MoEShape(Shape):
    head_size: int
    experts: int
    topk: int
    expert_ffn: int

    @property
    def head_dim(self) -> int:
        return self.head_size

    @property
    def attn_params(self) -> int:  # q, k, v, o, q/k norms and the two layer norms
        h, q, kv = self.hidden, self.heads * self.head_size, self.kv_heads * self.head_size
        return 2 * h * q + 2 * h * kv + 2 * self.head_size + 2 * h

    @property
    def expert_params_layer(self) -> int:
        return self.experts * 3 * self.hidden * self.expert_ffn

    @property
    def params_layer(self) -> int:
        return self.attn_params + self.experts * self.hidden + self.expert_params_layer

    @property
    def active_params(self) -> int:
        idle = (self.experts - self.topk) * 3 * self.hidden * self.expert_ffn
        return self.params - self.layers * idle


# Qwen3-30B-A3B's config.json (Hugging Face hub): 48 routed layers, 128 experts of 768, top-8
QWEN3_30B_A3B = MoEShape(name="30B-A3B", layers=48, hidden=2048, ffn=8 * 768, heads=32, kv_heads=4, vocab=151936,
                         tied=False, head_size=128, experts=128, topk=8, expert_ffn=768)


@dataclass(frozen=True, kw_only=True)
class MoELayout:
    nodes: int
    ep: int
    pp: int
    tp_infer: int
    tp: int = 1
    mb_tokens: int = 9216  # the recipes' micro_batch_tokens: the longest prompt + response

    def world(self, hw: Hardware) -> int:
        return self.nodes * hw.gpus_per_node


LAYOUTS = [MoELayout(nodes=2, ep=4, pp=2, tp=2, tp_infer=4),  # the qwen3_30b_a3b recipe (configs/qwen3_moe.py)
           MoELayout(nodes=4, ep=4, pp=2, tp=2, tp_infer=4),
           MoELayout(nodes=2, ep=8, pp=2, tp_infer=4), MoELayout(nodes=4, ep=8, pp=2, tp_infer=4),  # the first choice
           MoELayout(nodes=1, ep=8, pp=1, tp_infer=4), MoELayout(nodes=2, ep=4, pp=2, tp_infer=4),
           MoELayout(nodes=2, ep=16, pp=1, tp_infer=4), MoELayout(nodes=2, ep=8, pp=1, tp_infer=4)]


def dense_flops(s: MoEShape, seq: int) -> float:
    """Training FLOPs a token and layer outside the experts: attention projections, router, causal attention."""
    return 6.0 * (s.attn_params - 2 * s.head_size - 2 * s.hidden + s.experts * s.hidden) + 6.0 * s.hidden * seq


def expert_flops(s: MoEShape) -> float:
    return 6.0 * s.topk * 3 * s.hidden * s.expert_ffn


def layer_seconds_per_token(s: MoEShape, seq: int, c: Constants, r_moe: float) -> float:
    return dense_flops(s, seq) / c.r_mm + expert_flops(s) / r_moe


def fit_moe(path: Path, c: Constants) -> dict:
    """R_moe (and activation bytes) from moe_layer_bench.py's megatron-core rows of ``path`` (its JSON, or
    gpu_pending.sh's summary.json with the moe part's data folded in)."""
    data = json.loads(Path(path).read_text())
    if "parts" in data:
        data = next((p.get("data") for p in data["parts"] if p.get("part") == "moe" and p.get("data")), None)
        if data is None:
            raise ValueError(f"{path}: no moe part with data in this summary.json")
    cfg, rows = data["config"], [r for r in data["runs"] if r.get("impl") == "mcore" and "ms" in r]
    if not rows:
        raise ValueError(f"{path}: no successful megatron-core (impl 'mcore') run to fit on")
    s = dataclasses.replace(QWEN3_30B_A3B, layers=cfg["num_hidden_layers"], vocab=cfg["vocab_size"],
                            hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"],
                            kv_heads=cfg["num_key_value_heads"], head_size=cfg["head_dim"], experts=cfg["num_experts"],
                            topk=cfg["num_experts_per_tok"], expert_ffn=cfg["moe_intermediate_size"])
    inv, acts = [], []
    for r in rows:
        head = 6.0 * s.hidden * s.vocab / c.r_head
        left = r["ms"] / 1e3 - c.c_step - r["tokens"] * (s.layers * dense_flops(s, r["seq"]) / c.r_mm + head)
        inv.append(max(left, 1e-9) / (r["tokens"] * s.layers * expert_flops(s)))
        if r.get("peak_gib") and r.get("model_gib"):
            acts.append((r["peak_gib"] - 2 * r["model_gib"]) * GiB / (r["tokens"] * s.hidden * s.layers))
    out = {"r_moe": len(inv) / sum(inv), "source": str(path), "rows": len(rows)}
    if acts:
        out["act"] = sum(acts) / len(acts)
    return out


def project_moe(s: MoEShape, lay: MoELayout, w: Workload, c: Constants, r_moe: float,
                hw: Hardware = Hardware()) -> dict:
    world, t, p, e = lay.world(hw), lay.tp, lay.pp, lay.ep
    if world % (t * e * p) or s.experts % e or s.layers % p:
        raise ValueError(f"{lay}: tp·ep·pp = {t * e * p} must divide the {world} GPUs, ep the {s.experts} experts "
                         f"and pp the {s.layers} layers")
    d = world // (t * p)
    edp = d // e  # expert-data-parallel ranks: the expert states' optimizer shards
    seq = w.prompt_len + w.resp_mean
    tokens_rank = w.tokens / d
    m = max(1, math.ceil(tokens_rank / lay.mb_tokens))
    mb = tokens_rank / m
    layer_tok = layer_seconds_per_token(s, seq, c, r_moe)
    head_tok = 6.0 * s.hidden * s.vocab / c.r_head + c.gamma * s.vocab
    compute_mb = mb * ((s.layers / p) * layer_tok + head_tok) / t + c.c_step + c.loss_t0
    bw_ep = hw.b_nvl if t * e <= hw.gpus_per_node else hw.b_ib
    a2a = 0.0 if e == 1 else 4 * (mb * s.topk * s.hidden * 2.0 * (e - 1) / e / bw_ep + hw.alpha)
    stage_mb = compute_mb + (s.layers / p) * a2a
    fwd_bwd = (m + p - 1) * stage_mb
    dense_shard = ((s.params_layer - s.expert_params_layer) * s.layers / p + s.vocab * s.hidden) / t
    expert_shard = s.expert_params_layer * s.layers / p / (e * t)
    dp_bw = hw.b_nvl if lay.nodes == 1 else hw.b_ib
    dp_comm = 6.0 * ((d - 1) / d * dense_shard + ((edp - 1) / edp * expert_shard if edp > 1 else 0.0)) / dp_bw
    optim = 36.0 * (dense_shard / d + expert_shard / edp) / hw.hbm_bw
    refit = 2.0 * (dense_shard + expert_shard) / hw.b_nvl
    static = dense_shard * (2 + 4 + 12 / d) + expert_shard * (2 + 4 + 12 / edp) + c.c0
    acts = c.act * s.hidden * (s.layers / p) * mb * min(m, p) / t + c.logit_bytes * mb * s.vocab / t
    roll = rollout_seconds(s, Layout(nodes=lay.nodes, tp=t, pp=p, tp_infer=lay.tp_infer), w, hw, static)
    train_s = fwd_bwd / 3.0 + fwd_bwd + (1 - hw.dp_overlap) * dp_comm + optim + refit
    step = train_s + roll["rollout_s"]
    return {"model": s.name, "nodes": lay.nodes, "gpus": world, "tp": t, "ep": e, "pp": p, "dp": d, "expert_dp": edp,
            "tp_infer": lay.tp_infer, "mb_tokens_max": lay.mb_tokens, "microbatches": m,
            "mem_train_gib": (static + acts) / GiB,
            "fits": static + acts <= hw.hbm_bytes, "fwd_bwd_s": fwd_bwd, "a2a_s": (m + p - 1) * (s.layers / p) * a2a,
            "dp_exposed_s": (1 - hw.dp_overlap) * dp_comm, "optim_s": optim, "refit_s": refit, "train_s": train_s,
            **roll, "step_s": step, "train_tok_s_gpu": w.tokens / train_s / world,
            "step_tok_s_gpu": w.tokens / step / world}


def table(moe_json: Path | None = None, c: Constants | None = None) -> dict:
    c = c or calibrated_constants()
    fitted = fit_moe(moe_json, c) if moe_json else None
    r_moe = fitted["r_moe"] if fitted else ASSUMED_MOE_EFFICIENCY * c.r_mm
    if fitted and "act" in fitted:
        c = dataclasses.replace(c, act=fitted["act"])
    s = QWEN3_30B_A3B
    rows = []
    for lay in LAYOUTS:
        try:
            rows.append(project_moe(s, lay, Workload(), c, r_moe))
        except ValueError as err:
            rows.append({"nodes": lay.nodes, "tp": lay.tp, "ep": lay.ep, "pp": lay.pp, "mb_tokens_max": lay.mb_tokens,
                         "error": str(err)})
    return {"shape": {"params": s.params, "active_params": s.active_params}, "r_mm": c.r_mm, "r_moe": r_moe,
            "r_moe_source": fitted["source"] if fitted else f"ASSUMED {ASSUMED_MOE_EFFICIENCY} x R_mm", "act": c.act,
            "rows": rows}


def render(out: dict) -> str:
    day = datetime.date.today().isoformat()
    sh = out["shape"]
    lines = [f"# Qwen3-30B-A3B RED step by EP and PP ({day}, projected for 8×H100-80GB nodes)", "",
             f"benchmarks/projection_moe.py: {sh['params'] / 1e9:.1f}B parameters, {sh['active_params'] / 1e9:.2f}B "
             f"active a token; R_mm {out['r_mm'] / 1e12:.0f} TFLOP/s (projection.py's calibration), R_moe "
             f"{out['r_moe'] / 1e12:.0f} TFLOP/s ({out['r_moe_source']}), {out['act']:.1f} activation bytes a "
             "token·hidden·layer. The paper's step (64 prompts × 8, ~2,500-token responses). Not measured on a "
             "GPU: the multi-GPU terms are arithmetic on datasheet bandwidths (projection.py's Hardware).", "",
             "| nodes | TP | EP | PP | micro-batch tokens | DP (expert DP) | GiB/GPU train | fits | fwd+bwd s | "
             "all-to-all s | train s | rollout s | step s | tokens/s/GPU |",
             "|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['nodes']} | {r['tp']} | {r['ep']} | {r['pp']} | {r['mb_tokens_max']} | {r['error']} "
                         "| | | | | | | | |")
            continue
        lines.append(f"| {r['nodes']} | {r['tp']} | {r['ep']} | {r['pp']} | {r['mb_tokens_max']} | "
                     f"{r['dp']} ({r['expert_dp']}) | {r['mem_train_gib']:.1f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['fwd_bwd_s']:.1f} | {r['a2a_s']:.1f} | {r['train_s']:.1f} | "
                     f"{r['rollout_s']:.1f} | {r['step_s']:.1f} | {r['step_tok_s_gpu']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--moe-json", default=None, help="moe_layer_bench.py's JSON or gpu_pending.sh's summary.json")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    ap.add_argument("--report", action="store_true", help="write benchmarks/reports/projection_moe_<date>.{md,json}")
    args = ap.parse_args(argv)
    out = table(Path(args.moe_json) if args.moe_json else None)
    text = render(out)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.report:
        day = datetime.date.today().isoformat()
        (REPORTS / f"projection_moe_{day}.md").write_text(text)
        (REPORTS / f"projection_moe_{day}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
