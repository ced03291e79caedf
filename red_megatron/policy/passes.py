"""The two passes the trainer needs, run through Megatron's pipeline schedules.

- ``logprob_pass``: no grad; per response token the log-prob of the sampled token and the
  full-vocabulary entropy at the sampling temperature (the old-policy pass of RED step 3).
- ``train_pass``: forward + backward of the RED loss over micro-batches (the optimizer step is
  the caller's: ``policy.MegatronPolicy.train_step``).

Both run on one ``batching.StepBatch`` (built once per step). The per-token inputs are one
``algo.contract.TokenTerms``, the scalars one ``algo.contract.LossParams`` (docs/KERNEL_CONTRACT.md).

Both call ``get_forward_backward_func()``, so one code path runs PP=1
(forward_backward_no_pipelining) and PP>1 (1F1B, interleaved with virtual stages); micro-batches
come from ``batching``. The loss runs on the vocab-parallel logits (``parallel_output=True``)
with the TP group, so the full vocabulary is never gathered by the model. With policy.fused_lm_head the
last stage outputs hidden states instead (model.hidden_lm_head) and the loss is kernels/lm_head_loss.py,
which forms the logits a token chunk at a time from the hidden states and the LM-head weight shard.

Loss scaling across micro-batches (read in megatron-core 0.16.1 and 0.19.2,
pipeline_parallel/schedules.py ``forward_step_calc_loss``): when ``loss_func`` returns 2 values
the schedule divides the loss by ``num_microbatches`` (legacy averaging, and multiplies by the CP
size); with 3 values and ``config.calculate_per_token_loss=False`` it divides by the token count
and by ``num_microbatches``; with 3 values and ``calculate_per_token_loss=True`` it leaves the loss
alone, DDP stops scaling grads by 1/DP (``gradient_scaling_factor=1``), and the schedule hands the
all-reduced token count to ``finalize_model_grads``, which would divide the grads by it.
RED's weight_N already carries every normaliser (global batch and DP world), so the gradient must
be the plain SUM of the micro-batch losses over micro-batches and DP ranks. We return 3 values,
set ``calculate_per_token_loss=True`` (``policy.py``) and install ``finalize_grads_sum``, which
calls ``finalize_model_grads`` with ``num_tokens=None``: no division anywhere.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist

from red_megatron.algo.contract import LossParams, TokenKind, TokenTerms
from red_megatron.policy.batching import MicroBatch, StepBatch

if TYPE_CHECKING:
    from red_megatron.policy.parallel import ParallelGroups

def resolve_loss_impl(name: str) -> tuple[Callable, Callable]:
    """(red_loss, logprob_entropy) for 'kernel', 'reference' or 'auto' (the Triton kernel iff CUDA:
    the Triton interpreter on a CPU is ~1000x slower than the PyTorch reference)."""
    if name == "auto":
        name = "kernel" if torch.cuda.is_available() else "reference"
    if name == "kernel":
        from kernels.red_loss import logprob_entropy, red_loss
        return red_loss, logprob_entropy
    if name == "reference":
        from kernels.red_loss_reference import logprob_entropy, red_loss_reference
        return red_loss_reference, logprob_entropy
    raise ValueError(f"loss_impl must be 'auto', 'kernel' or 'reference', got {name!r}")


def resolve_fused_head_impl(name: str, *, fp32_matmul: bool) -> tuple[Callable, Callable]:
    """(red_loss, logprob_entropy) of the LM-head-fused op (kernels/lm_head_loss.py) for policy.fused_lm_head:
    the Triton passes for 'kernel' ('auto' with CUDA), their chunked PyTorch twins for 'reference' (the same
    chunk-bounded memory; red_token_loss per token). ``fp32_matmul``: policy.lm_head_fp32."""
    if name == "auto":
        name = "kernel" if torch.cuda.is_available() else "reference"
    if name not in ("kernel", "reference"):
        raise ValueError(f"loss_impl must be 'auto', 'kernel' or 'reference', got {name!r}")
    from kernels.lm_head_loss import lm_head_logprob_entropy, lm_head_red_loss

    kw = dict(fp32_matmul=fp32_matmul, backend="triton" if name == "kernel" else "torch")
    return partial(lm_head_red_loss, **kw), partial(lm_head_logprob_entropy, **kw)


def finalize_grads_sum(model, num_tokens=None, *args, **kwargs):
    """``config.finalize_model_grads_func`` that never rescales by a token count (see module doc)."""
    from megatron.core.distributed import finalize_model_grads

    del num_tokens
    return finalize_model_grads(model, None, *args, **kwargs)


def _forward_step(device: torch.device, loss_fn: Callable, data_iterator, model):
    """Megatron ``forward_step_func``: one micro-batch through one model chunk."""
    from megatron.core.packed_seq_params import PackedSeqParams

    mb: MicroBatch = next(data_iterator)
    packed = None
    if mb.cu_seqlens is not None:
        cu = mb.cu_seqlens.to(device)
        packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                 max_seqlen_q=mb.max_seqlen, max_seqlen_kv=mb.max_seqlen)
    out = model(input_ids=mb.tokens_BS, position_ids=mb.position_ids_BS,  # on the device (StepBatch)
                attention_mask=None, packed_seq_params=packed)
    return out, partial(loss_fn, mb, model)


def _loss_inputs(out_BSX: torch.Tensor, model, fused_head: bool) -> tuple[tuple[torch.Tensor, ...], int]:
    """The loss's leading tensors and V_local: the logits [R, V_local], or with policy.fused_lm_head the
    hidden states [R, D] and the LM-head weight shard [V_local, D] (model.hidden_lm_head, kernels/lm_head_loss.py).

    R = B·S rows, a view (no copy) of the micro-batch's output. The loss runs on every row with weight 0
    where no response token is predicted, instead of gathering the response rows: a gather copies [M, V]
    and its backward allocates a fresh [R, V] gradient, whereas on the view the kernel can write the
    gradient in place into the logits buffer (grad_in_forward), so the loss adds no [R, V] tensor at all.
    Prompt rows cost one extra read each, small next to the model's forward.
    """
    rows = out_BSX.reshape(-1, out_BSX.shape[-1])
    if not fused_head:
        return (rows,), rows.shape[1]
    from red_megatron.policy.model import lm_head_weight

    w = lm_head_weight(model)
    return (rows, w), w.shape[0]


def _run_schedule(chunks: list, mbs: tuple[MicroBatch, ...], step_fn: Callable, *, forward_only: bool):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    fb = get_forward_backward_func()
    data = [iter(mbs) for _ in chunks] if len(chunks) > 1 else iter(mbs)
    return fb(forward_step_func=step_fn, data_iterator=data, model=chunks if len(chunks) > 1 else chunks[0],
              num_microbatches=len(mbs), seq_length=max(mb.tokens_BS.shape[1] for mb in mbs),
              micro_batch_size=max(mb.tokens_BS.shape[0] for mb in mbs), forward_only=forward_only)


def logprob_pass(chunks: list, batch: StepBatch, *, groups: ParallelGroups, vocab_size: int,
                 temperature: float, logprob_entropy: Callable,
                 fused_head: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_N, entropy_N) fp32 on every rank of the pipeline, no grad. N order (batching).
    ``fused_head``: the chunks output hidden states and ``logprob_entropy`` is the LM-head-fused one."""
    logp_N = torch.zeros(batch.num_tokens, dtype=torch.float32, device=groups.device)
    ent_N = torch.zeros(batch.num_tokens, dtype=torch.float32, device=groups.device)

    def loss_fn(mb: MicroBatch, model, out_BSX: torch.Tensor):
        xs, v_local = _loss_inputs(out_BSX, model, fused_head)
        lp_R, ent_R = logprob_entropy(*xs, mb.target_R, vocab_start=groups.tp_rank * v_local,
                                      vocab_size=vocab_size, temperature=temperature, group=groups.loss_group)
        lp, ent = lp_R[mb.logit_rows_M], ent_R[mb.logit_rows_M]
        idx = mb.token_index_M
        logp_N[idx] = lp.float()
        ent_N[idx] = ent.float()
        zero = out_BSX.new_zeros((), dtype=torch.float32)
        return zero, torch.tensor(0, dtype=torch.int, device=groups.device), {}

    for c in chunks:
        c.eval()
    with torch.no_grad():
        _run_schedule(chunks, batch.micro_batches, partial(_forward_step, groups.device, loss_fn), forward_only=True)
    return _share_token_outputs(logp_N, ent_N, groups)


def _share_token_outputs(logp_N: torch.Tensor, ent_N: torch.Tensor, groups: ParallelGroups):
    """Per-token results complete on every rank of the replica: CP ranks and pipeline stages."""
    if groups.cp_size > 1:  # each response token was computed by exactly one CP rank (zeros elsewhere)
        dist.all_reduce(logp_N, group=groups.cp_group)
        dist.all_reduce(ent_N, group=groups.cp_group)
    if groups.pp_size > 1:  # only the last stage has logits: share its results with the pipeline
        dist.broadcast(logp_N, src=groups.pp_last_rank, group=groups.pp_group)
        dist.broadcast(ent_N, src=groups.pp_last_rank, group=groups.pp_group)
    return logp_N, ent_N


def train_pass(chunks: list, batch: StepBatch, terms: TokenTerms, *, groups: ParallelGroups, vocab_size: int,
               params: LossParams, red_loss: Callable, grad_in_forward: bool = False,
               token_outputs: bool = False, fused_head: bool = False) -> dict:
    """Forward + backward of the RED loss; grads end up in the DDP buffers (summed, see module doc).

    ``terms``: the step's bundle, N = batch.num_tokens, on the device, with logp_old_N set, or None
    for on-policy (the ratio's denominator is the forward's own detached log-prob), and ref_logp_N
    when the loss has a KL term. ``grad_in_forward``: the kernel writes the logits' gradient in place
    (kernels/red_loss.py; not with ``fused_head``, whose chunks output hidden states and whose ``red_loss``
    is the LM-head-fused one, kernels/lm_head_loss.py). ``token_outputs``: also return this forward's
    per-token log-prob and entropy on every rank of the pipeline (what ``logprob_pass`` would have given on
    the same weights).

    Returns, identical on every rank: loss (summed over micro-batches and DP ranks), clip_frac
    (over ONLINE tokens with weight > 0), loss_finite (False if any micro-batch loss was NaN/Inf),
    and with ``token_outputs`` logp_N / entropy_N (fp32, N order, on the device).
    """
    stats: list[torch.Tensor] = []
    if token_outputs:
        logp_N = torch.zeros(batch.num_tokens, dtype=torch.float32, device=groups.device)
        ent_N = torch.zeros(batch.num_tokens, dtype=torch.float32, device=groups.device)

    in_place = {} if fused_head else {"grad_in_forward": grad_in_forward}

    def loss_fn(mb: MicroBatch, model, out_BSX: torch.Tensor):
        xs, v_local = _loss_inputs(out_BSX, model, fused_head)
        t = terms.select(mb.token_index_M)
        out = red_loss(*xs, mb.target_R, vocab_start=groups.tp_rank * v_local,
                       vocab_size=vocab_size, temperature=params.temperature, group=groups.loss_group,
                       **in_place, **params.loss_kwargs(), **t.rows(mb.logit_rows_M, xs[0].shape[0]).kernel_kwargs())
        if token_outputs:
            logp_N[mb.token_index_M] = out.logp_N.detach()[mb.logit_rows_M].float()
            ent_N[mb.token_index_M] = out.entropy_N.detach()[mb.logit_rows_M].float()
        n_online = ((t.kind_N == TokenKind.ONLINE) & (t.weight_N != 0)).sum().float()
        loss = out.loss.float()
        stats.append(torch.stack([loss.detach(), out.clip_frac.detach().float() * n_online, n_online,
                                  (~torch.isfinite(loss.detach())).float()]))
        return loss, torch.tensor(int(mb.target_M.numel()), dtype=torch.int, device=groups.device), {}

    for c in chunks:
        c.train()
    _run_schedule(chunks, batch.micro_batches, partial(_forward_step, groups.device, loss_fn), forward_only=False)
    # [loss_sum, clipped, n_online, n_nonfinite]; zeros off the last stage, so a SUM over the
    # pipeline hands the last stage's numbers to every stage, and a SUM over DP adds the partial
    # sums of the globally normalised loss.
    tot = torch.stack(stats).sum(0) if stats else torch.zeros(4, device=groups.device)
    if groups.pp_size > 1:
        dist.all_reduce(tot, group=groups.pp_group)
    if groups.dp_size * groups.cp_size > 1:  # CP ranks hold disjoint tokens of the same sequences
        dist.all_reduce(tot, group=groups.dp_cp_group)
    loss_sum, clipped, n_online, n_bad = tot.tolist()
    out = {"loss": loss_sum, "clip_frac": clipped / n_online if n_online > 0 else 0.0, "loss_finite": n_bad == 0}
    if token_outputs:
        out["logp_N"], out["entropy_N"] = _share_token_outputs(logp_N, ent_N, groups)
    return out
