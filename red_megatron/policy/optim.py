"""DDP wrapping, Megatron optimizer (distributed optimizer by default), lr schedule, and one step.

Why the step is ours and not ``optimizer.step()``: with bf16/fp32 and no loss scaler, Megatron's
``MixedPrecisionOptimizer.step`` never checks for NaN/Inf, and ``clip_grad_by_total_norm_fp32``
with a NaN norm would write NaN into every weight. RED runs unattended for days; one bad batch
must cost one skipped step, not the run. So ``optimizer_step`` splits Megatron's step into its
public pieces (``prepare_grads`` -> grad norm -> clip -> ``step_with_ready_grads``) and skips
the update, without touching weights or optimizer state, when the loss or the grad norm is not
finite. The grad norm is all-reduced over the optimizer's grad-stats group, so every rank takes
the same decision.

Learning-rate convention: update k (1-based) uses the schedule's value at k: linear warmup
max_lr·k/warmup, then cosine from max_lr to min_lr at ``lr_decay_steps``. (Megatron's training
loop steps the scheduler after the update, which makes the first warmup update use lr 0.)
Skipped updates do not advance the schedule, as in Megatron's loop.
"""
from __future__ import annotations

import math
import torch

from red_megatron.policy.config import PolicyConfig


def wrap_ddp(chunks: list, *, use_distributed_optimizer: bool) -> list:
    """Megatron DDP around every model chunk (grads reduced in fp32, no overlap: deterministic)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.utils import get_model_config

    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                            overlap_param_gather=False,
                                            use_distributed_optimizer=use_distributed_optimizer,
                                            check_for_nan_in_grad=False, bucket_size=None)
    out = []
    for i, chunk in enumerate(chunks):
        out.append(DistributedDataParallel(config=get_model_config(chunk), ddp_config=ddp_cfg, module=chunk,
                                           disable_bucketing=i > 0))
    for m in out:
        m.broadcast_params()  # DP replicas start from identical weights
    return out


def build_optimizer(ddp_chunks: list, s: PolicyConfig):
    """Megatron AdamW (decoupled weight decay) over the DDP chunks, from the policy's own config."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    params_dtype = getattr(torch, s.dtype)  # PolicyConfig.dtype is one of DTYPES: torch's names
    cfg = OptimizerConfig(optimizer="adam", lr=s.lr, min_lr=s.min_lr, weight_decay=s.weight_decay,
                          adam_beta1=s.adam_beta1, adam_beta2=s.adam_beta2, adam_eps=s.adam_eps, clip_grad=s.clip_grad,
                          bf16=params_dtype == torch.bfloat16, fp16=False, params_dtype=params_dtype,
                          use_distributed_optimizer=s.use_distributed_optimizer, decoupled_weight_decay=True,
                          log_num_zeros_in_grad=False)
    return get_megatron_optimizer(cfg, ddp_chunks)


def build_scheduler(optimizer, s: PolicyConfig):
    """Megatron's OptimizerParamScheduler: linear warmup from 0, cosine to min_lr, constant wd."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=s.lr, min_lr=s.min_lr,
                                   lr_warmup_steps=s.warmup_steps, lr_decay_steps=s.lr_decay_steps,
                                   lr_decay_style="cosine", start_wd=s.weight_decay, end_wd=s.weight_decay,
                                   wd_incr_steps=max(1, s.lr_decay_steps), wd_incr_style="constant",
                                   # a resume applies the run's schedule, not the checkpoint's (lr, warm-up, decay):
                                   # only the update count comes from the checkpoint (issue 28)
                                   use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)


def zero_grads(ddp_chunks: list, optimizer) -> None:
    for m in ddp_chunks:
        m.zero_grad_buffer()
    optimizer.zero_grad()


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


@torch.no_grad()
def optimizer_step(optimizer, scheduler, *, clip_grad: float, loss_finite: bool) -> dict[str, float]:
    """Clip and apply the accumulated grads, or skip (weights untouched) on NaN/Inf.

    Returns grad_norm (pre-clip), lr (used by this update; 0 when skipped), skipped (0/1).
    Collective on the optimizer's groups: call on every rank.
    """
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    found_inf = bool(optimizer.prepare_grads())  # grads -> fp32 main grads (no param change)
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not loss_finite or not math.isfinite(grad_norm):
        return {"grad_norm": grad_norm, "lr": 0.0, "skipped": 1.0}
    scheduler.step(increment=1)  # the update below uses lr(k), k = updates so far + 1
    if clip_grad > 0.0:
        # an MoE model's optimizer is megatron's ChainedOptimizer (expert and dense parameters reduce over
        # different data-parallel groups): every part is clipped by the one global norm, as its step() does
        parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
        params = [p for part in parts for p in part.get_parameters()]
        if params:
            clip_grad_by_total_norm_fp32(params, clip_grad, grad_norm,
                                         getattr(optimizer.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8",
                                                 False))
    optimizer.step_with_ready_grads()
    return {"grad_norm": grad_norm, "lr": current_lr(optimizer), "skipped": 0.0}
