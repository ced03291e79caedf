"""The cluster recipes: Qwen2.5-Math-1.5B (the paper's run), Qwen2.5-7B and Qwen2.5-32B on 8×H100 nodes.

Hyper-parameters are RED_SPEC.md's (the authors' scripts): 64 prompts × (7 online + 1 offline),
T = 1.0, 8k response limit, AdamW β = (0.9, 0.95), weight decay 0, grad-clip 1.0, lr 2e-6 with
cosine decay to 0.1·lr, one optimiser step per rollout batch. The step count (500) is our
choice, not the paper's (it does not state one); override ``steps=`` (lr_decay_steps follows).

Layouts (why; the numbers are benchmarks/projection.py's, see benchmarks/reports/projection_*.md):
- 1.5B: TP=1, PP=1: weights + grads + sharded optimizer ≈ 11 GiB, ≈ 36 GiB/GPU projected with
  8k-token micro-batches (the recipes use 9,216 = 1k prompt + 8k response, refused below that since
  2026-12-02; the projection is at 8k); pure DP over the node's 8 GPUs, one vLLM engine a GPU (tp_infer=1).
- 7B: TP=2 (divides the 28 query / 4 KV heads), PP=1: ≈ 60 GiB/GPU projected at DP=4 with
  8k-token micro-batches, where TP=1 does not fit 80 GB (≈ 108 GiB); vLLM tp_infer=2 leaves room
  for the KV cache beside the colocated training state.
- 32B: TP=8 (divides 40 / 8 heads; a full NVLink node), PP=2 so that one DP replica is 2 nodes
  (≈ 57 GiB/GPU projected); vLLM tp_infer=4 (16 GB of weights a GPU). Needs nodes × 8 divisible
  by 16. (Projections calibrated on H100 measurements: benchmarks/reports/projection_2026-11-23.md.)
Qwen2.5-Math-1.5B ships max_position_embeddings=4096; like LUFFY (whose data and scripts the
authors use), set rope_theta=40000 and max_position_embeddings=16384 in its config.json so the
1k prompt + 8k response window fits (check_world does not read rope settings).
Model and data paths: $RED_MODEL_ROOT (default /models) and $RED_DATA_ROOT (default /data) as
the job sees them; override ``model_dir=`` / ``data.path=`` for other layouts.
"""
from __future__ import annotations

import os

from red_megatron.algo.config import AlgoConfig
from red_megatron.config import EvalRunConfig, RunConfig
from red_megatron.data.dataset import DataConfig
from red_megatron.eval.protocol import EvalConfig
from red_megatron.policy.config import PolicyConfig
from red_megatron.reward.scorer import RewardConfig
from red_megatron.rollout.config import RolloutConfig

PROMPT_TOKENS, RESPONSE_TOKENS = 1024, 8192
STEPS = 500


def _paths(model: str) -> tuple[str, str, str]:
    models, data = os.environ.get("RED_MODEL_ROOT", "/models"), os.environ.get("RED_DATA_ROOT", "/data")
    return (f"{models}/{model}", f"{data}/openr1_math_46k_8192.parquet", f"{data}/math_eval.parquet")


def _paper(name: str, model: str, *, tp: int, pp: int, tp_infer: int, gpu_mem: float, cp: int = 1,
           response_tokens: int = RESPONSE_TOKENS) -> RunConfig:
    model_dir, train_data, eval_data = _paths(model)
    window = PROMPT_TOKENS + response_tokens
    # a micro-batch holds the longest prompt + response (9,216 tokens at 8k), per CP rank its 1/cp share
    # (each sequence padded to a multiple of 2·cp); shorter sequences are packed
    mb_tokens = window if cp == 1 else -(-window // (2 * cp)) * 2
    return RunConfig(
        name=name,
        run_dir=f"runs/{name}",
        model_dir=model_dir,
        seed=0,
        steps=STEPS,
        checkpoint_every=20,
        algo=AlgoConfig(preset="red", num_online=7, temperature=1.0, eps_lo=0.2, eps_hi=0.2),
        data=DataConfig(path=train_data, schema="openr1", max_prompt_tokens=PROMPT_TOKENS,
                        max_response_tokens=response_tokens, global_batch_size=64, seed=0),
        policy=PolicyConfig(tp=tp, pp=pp, cp=cp, dtype="bfloat16", micro_batch_tokens=mb_tokens,
                            lr=2e-6, min_lr_ratio=0.1,
                            adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, clip_grad=1.0,
                            lr_decay_steps=STEPS, use_distributed_optimizer=True),
        rollout=RolloutConfig(tp_infer=tp_infer, executor="external_launcher" if tp_infer > 1 else "uni",
                              gpu_memory_utilization=gpu_mem, max_model_len=window,
                              enforce_eager=False, enable_sleep_mode=True),
        reward=RewardConfig(num_workers=16),
        eval=EvalRunConfig(data_path=eval_data, protocol=EvalConfig(temperature=0.6, max_tokens=response_tokens)),
    )


def qwen25_math_1p5b() -> RunConfig:
    return _paper("qwen25_math_1p5b", "Qwen2.5-Math-1.5B", tp=1, pp=1, tp_infer=1, gpu_mem=0.4)


def qwen25_7b() -> RunConfig:
    return _paper("qwen25_7b", "Qwen2.5-7B", tp=2, pp=1, tp_infer=2, gpu_mem=0.45)


def qwen25_32b() -> RunConfig:
    return _paper("qwen25_32b", "Qwen2.5-32B", tp=8, pp=2, tp_infer=4, gpu_mem=0.5)


# 16k-token responses (distilled traces from R1-class teachers): one sequence no longer fits a GPU at
# the 8k layouts (benchmarks/reports/projection_long_2026-12-02.md: 7B TP=2+SP fits 13k tokens, 32B
# TP=8+SP PP=2 15k); context parallelism over 2 ranks halves each rank's share.
def qwen25_7b_16k() -> RunConfig:
    return _paper("qwen25_7b_16k", "Qwen2.5-7B", tp=2, pp=1, cp=2, tp_infer=2, gpu_mem=0.45,
                  response_tokens=2 * RESPONSE_TOKENS)


def qwen25_32b_16k() -> RunConfig:
    return _paper("qwen25_32b_16k", "Qwen2.5-32B", tp=8, pp=2, cp=2, tp_infer=4, gpu_mem=0.5,
                  response_tokens=2 * RESPONSE_TOKENS)
