"""PolicyConfig: the Megatron policy's parallel layout, micro-batching, optimiser and schedule.

Kept free of megatron imports so recipes and the CLI can build and validate it anywhere.
Defaults follow RED_SPEC.md step 7 (the authors' run): AdamW β=(0.9, 0.95), weight decay 0,
grad-clip 1.0, cosine to 0.1·lr; lr itself comes from the preset (2e-6 RL, 5e-5 SFT).
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("bfloat16", "float32")
LOSS_IMPLS = ("auto", "kernel", "reference")
CKPT_SHARDING = ("dp_reshardable", "fully_reshardable")


@dataclass(kw_only=True)
class PolicyConfig:
    tp: int = 1  # megatron tensor parallelism (divides the attention and KV heads)
    pp: int = 1  # megatron pipeline parallelism (divides the layers)
    cp: int = 1  # context parallelism: each sequence split over cp ranks (2·cp load-balanced chunks)
    ep: int = 1  # expert parallelism (MoE checkpoints): the routed experts split over ep of the DP × CP ranks
    # MoE in RL (docs/MOE.md): the load-balancing auxiliary loss off (0) unless set (logged as moe/aux_loss)
    moe_aux_loss_coeff: float = 0.0
    moe_router_fp32: bool = True  # MoE: router logits and top-k in fp32 (the routing the engine and trainer agree on)
    # megatron's sequence parallelism (norms on sequence shards, activations / TP); None: on iff tp > 1
    sequence_parallel: bool | None = None
    dtype: str = "bfloat16"  # parameters and activations; main params, grads and optimiser state are fp32
    # the LM head's matmul in fp32 (hidden states and weight upcast): logits as rollout.lm_head_fp32 computes
    # them in vLLM, against the train/inference mismatch (docs/ASYNC.md); the [tokens, vocab] logits are fp32
    lm_head_fp32: bool = False
    # the LM head inside the loss (kernels/lm_head_loss.py): the output layer's matmul is skipped, the loss takes
    # the hidden states and the head's weight shard and forms the logits a token chunk at a time, so no
    # [tokens, vocab/TP] logits (nor their gradient) exist, in the old-log-prob pass and the update alike. TP, SP
    # and PP (last stage) as without it; with lm_head_fp32 the chunks' matmul runs on fp32 operands. Cost: one more
    # LM-head GEMM per update (the backward recomputes each chunk's logits). grad_in_forward does not apply to it.
    fused_lm_head: bool = False
    micro_batch_tokens: int = 8192  # computed tokens per micro-batch (packed: exact; padded: rows × longest)
    pack_sequences: bool = True  # packed THD micro-batches; False = length-bucketed right padding
    lr: float = 2e-6  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to min_lr_ratio · lr
    warmup_steps: int = 0  # linear warmup updates
    lr_decay_steps: int = 1000  # updates from 0 to the end of the cosine (set to the run's steps)
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.95  # AdamW beta2
    adam_eps: float = 1e-8  # AdamW epsilon
    weight_decay: float = 0.0  # AdamW decoupled weight decay (0 in the paper)
    clip_grad: float = 1.0  # global grad-norm clip; 0 disables clipping
    # shard the fp32 main params and optimizer state over DP (megatron's distributed optimizer)
    use_distributed_optimizer: bool = True
    loss_impl: str = "auto"  # 'kernel' (Triton), 'reference' (PyTorch), 'auto' = kernel iff CUDA
    grad_in_forward: bool = True  # Triton kernel only: dL/dlogits written in place into the logits buffer in the forward (no extra [T, V] tensor)
    checkpoint_sharding: str = "dp_reshardable"  # 'fully_reshardable' to resume the optimizer at another TP/PP
    keep_last_checkpoints: int = 2  # 0 keeps all
    seed: int = 1234  # model-parallel RNG seed when the caller gives none (a training run passes its own seed)

    @property
    def use_sequence_parallel(self) -> bool:
        return self.tp > 1 if self.sequence_parallel is None else bool(self.sequence_parallel)

    def __post_init__(self) -> None:
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("PolicyConfig.sequence_parallel=true needs policy.tp > 1 (it splits activations over TP)")
        if self.cp > 1 and not self.pack_sequences:
            raise ValueError(f"PolicyConfig.cp={self.cp} needs pack_sequences=true (context parallelism is "
                             f"implemented for packed THD micro-batches)")
        if self.ep > 1 and self.tp > 1 and self.sequence_parallel is False:
            raise ValueError(f"PolicyConfig.ep={self.ep} with tp={self.tp} needs sequence_parallel (megatron-core "
                             f"refuses expert and tensor parallelism without it); leave it unset or true")
        if not self.moe_aux_loss_coeff >= 0:
            raise ValueError(f"PolicyConfig.moe_aux_loss_coeff must be >= 0 (0: off), got {self.moe_aux_loss_coeff!r}")
        for name in ("tp", "pp", "cp", "ep", "micro_batch_tokens", "lr_decay_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PolicyConfig.{name} must be an int >= 1, got {v!r}")
        for name in ("warmup_steps", "keep_last_checkpoints", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"PolicyConfig.{name} must be an int >= 0, got {v!r}")
        if self.warmup_steps >= self.lr_decay_steps:
            raise ValueError(f"PolicyConfig.warmup_steps ({self.warmup_steps}) must be < lr_decay_steps "
                             f"({self.lr_decay_steps})")
        for name in ("lm_head_fp32", "fused_lm_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PolicyConfig.{name} must be a bool (true/false), got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"PolicyConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"PolicyConfig.loss_impl must be one of {LOSS_IMPLS}, got {self.loss_impl!r}")
        if self.checkpoint_sharding not in CKPT_SHARDING:
            raise ValueError(f"PolicyConfig.checkpoint_sharding must be one of {CKPT_SHARDING}, "
                             f"got {self.checkpoint_sharding!r}")
        if not self.lr > 0:
            raise ValueError(f"PolicyConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"PolicyConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"PolicyConfig.{name} must be in [0, 1), got {v!r}")
        if not self.adam_eps > 0:
            raise ValueError(f"PolicyConfig.adam_eps must be > 0, got {self.adam_eps!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"PolicyConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.clip_grad >= 0:
            raise ValueError(f"PolicyConfig.clip_grad must be >= 0 (0 disables), got {self.clip_grad!r}")

    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio


def check_expert_grid(world: int, *, tp: int, pp: int, ep: int, field: str = "policy.ep") -> None:
    """The one statement of the expert-parallel layout rule (parallel.init_model_parallel and the run
    validator call it): megatron-core lays the experts out on a second grid over the same ranks, expert-TP
    (= tp) × EP × expert-DP × PP, so tp·ep·pp must divide the world, i.e. ep divides dp × cp."""
    if ep > 1 and world % (tp * ep * pp) != 0:
        dp_cp = f"{world // (tp * pp)}" if world % (tp * pp) == 0 else "not an integer"
        raise ValueError(f"{field}={ep} × policy.tp={tp} × policy.pp={pp} must divide the world size {world}: "
                         f"the experts are split over the data- and context-parallel ranks (dp × cp = {dp_cp})")
