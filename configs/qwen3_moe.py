"""Qwen3-30B-A3B (a mixture of experts: 128 experts, top-8, 3.3B of 30.5B parameters active a token) with
the paper's hyper-parameters (configs/qwen25.py's ``_paper``), on 8×H100 nodes.

Layout: TP=2 (with SP, and the experts' GEMMs split over the same 2 ranks: expert-tensor parallelism =
TP), EP=4 (32 of the 128 experts a rank), PP=2 (24 layers a stage), vLLM tp_infer=4: the layout
benchmarks/projection_moe.py (the same step model the dense recipes are chosen by, with the MoE terms)
finds to fit, at 64 GiB a GPU for training at 2 nodes and 939 tokens/s/GPU
(benchmarks/reports/projection_moe_2026-12-06.md). The first choice, EP=8 × PP=2 × TP=1 (960 tokens/s/GPU),
projects to 95 GiB at 2 nodes and 85 GiB at 4: the weights and optimizer alone are ~38 GB a rank there, but
two 9,216-token micro-batches of activations in flight (PP=2) do not fit beside them. Both projections
rest on two assumptions no GPU has checked yet (the MoE GEMM rate and the dense activation bytes a token):
`gpu_pending.sh moe` measures both; rerun the projection with `--moe-json` before the first real run
(docs/MOE.md). Needs a world divisible by tp·ep·pp = 16: 2 or 4 nodes.
The MoE settings for RL are the PolicyConfig defaults: no load-balancing auxiliary loss, router in fp32
(docs/MOE.md). Routing replay (algo.routing_replay=rollout with rollout.return_routing=true and
rollout.enable_prefix_caching=false) is opt-in.
"""
from __future__ import annotations

import dataclasses

from configs.qwen25 import _paper
from red_megatron.config import RunConfig


def qwen3_30b_a3b() -> RunConfig:
    cfg = _paper("qwen3_30b_a3b", "Qwen3-30B-A3B", tp=2, pp=2, tp_infer=4, gpu_mem=0.45)
    cfg.policy = dataclasses.replace(cfg.policy, ep=4)
    return cfg
