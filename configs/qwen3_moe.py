"""Qwen3-30B-A3B (a mixture of experts: 128 experts, top-8, 3.3B of 30.5B parameters active a token) with
the paper's hyper-parameters (configs/qwen25.py's ``_paper``), on 8×H100 nodes.

Layout: EP=8 (the experts split over 8 ranks: 16 of 128 a rank), PP=2 (24 layers a stage), TP=1 (the
attention is small: 32 heads of 128, 4 KV heads), vLLM tp_infer=4. Why, by arithmetic on the checkpoint's
shapes (not calibrated on a GPU; benchmarks/projection_moe.py, with the dense activation bytes, puts the
activations of two 9,216-token micro-batches in flight on top, ~95 GiB a GPU in all, and TP=2 × EP=4 × PP=2
at ~64 GiB: to settle with `gpu_pending.sh moe`'s measurement before the first run, docs/MOE.md): the
experts are 29.0B parameters and the rest 1.5B; at EP=8 and PP=2 a rank holds 1.8B expert + ~0.7B other
parameters: 5 GB of bf16 weights, 10 GB of fp32 gradient buffers, and the distributed optimizer's 12 bytes a
parameter sharded over the expert-data-parallel ranks (world/(EP·PP) = 1 at 2 nodes: 22 GB for the
experts) and the data-parallel ranks (8: 1 GB): ~38 GB before activations, beside a colocated engine with a
quarter of 61 GB of bf16 weights (tp_infer=4). EP=4 would double the expert share (~60 GB): too tight next to
the engine at 80 GB. Needs a world divisible by tp·ep·pp = 16: 2 or 4 nodes.
The MoE settings for RL are the PolicyConfig defaults: no load-balancing auxiliary loss, router in fp32
(docs/MOE.md). Routing replay (algo.routing_replay=rollout with rollout.return_routing=true and
rollout.enable_prefix_caching=false) is opt-in.
"""
from __future__ import annotations

import dataclasses

from configs.qwen25 import _paper
from red_megatron.config import RunConfig


def qwen3_30b_a3b() -> RunConfig:
    cfg = _paper("qwen3_30b_a3b", "Qwen3-30B-A3B", tp=1, pp=2, tp_infer=4, gpu_mem=0.45)
    cfg.policy = dataclasses.replace(cfg.policy, ep=8)
    return cfg
