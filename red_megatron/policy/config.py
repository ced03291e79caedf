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
        for name in ("tp", "pp", "cp", "micro_batch_tokens", "lr_decay_steps"):
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
