"""MegatronPolicy: the trainer's one handle on the Megatron model.

It owns the model chunks (this rank's pipeline stage(s), TP-sharded), their DDP wrappers, the
Megatron optimizer (distributed optimizer by default) and the lr schedule, and offers exactly
what the RED loop needs:

    policy = MegatronPolicy(chunks, cfg, groups=groups, vocab_size=V, loss=objective.params)
    batch = policy.step_batch(tokens, prompt_lens)                 # sequences + plan, once a step
    logp_N, entropy_N = policy.logprobs_and_entropy(batch)         # no grad, at loss.temperature
    metrics = policy.train_step(batch, terms=terms, logp_old_N=logp_N)
    policy.save_checkpoint(root, step, trainer_state) / policy.load_latest_checkpoint(root)

Every method is collective over the ranks that hold the model (all TP, PP and DP ranks call
it with their own data-parallel batch; TP/PP peers of one replica pass the same batch).
Per-token tensors are 1-D in "N order": the response tokens of the sequences, in sequence
order (``batching.SequenceBatch``). Results are identical on every rank of a replica.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from red_megatron.algo.contract import LossParams, TokenTerms
from red_megatron.policy.batching import SequenceBatch, StepBatch, plan_micro_batches
from red_megatron.policy.checkpoint import LoadInfo, load_checkpoint, resolve_checkpoint, save_checkpoint
from red_megatron.policy.config import PolicyConfig
from red_megatron.policy.context_parallel import localize_micro_batch
from red_megatron.policy.optim import (build_optimizer, build_scheduler, current_lr, optimizer_step,
                                       wrap_ddp, zero_grads)
from red_megatron.policy.parallel import ParallelGroups
from red_megatron.policy.passes import (finalize_grads_sum, logprob_pass, resolve_fused_head_impl, resolve_loss_impl,
                                        train_pass)

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _as_batch(tokens, prompt_lens) -> SequenceBatch:
    if isinstance(tokens, SequenceBatch):
        return tokens
    if prompt_lens is None:
        raise ValueError("prompt_lens is required when tokens is not a SequenceBatch")
    rows = [t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=torch.long) for t in tokens]
    return SequenceBatch(tokens=rows, prompt_lens=[int(p) for p in prompt_lens])


class MegatronPolicy:
    """Model chunks + DDP + optimizer + scheduler, with the passes and checkpoints of the RED loop.

    ``chunks``: this rank's GPTModel chunk(s) built with ``parallel_output=True`` in the layout of
    ``groups`` (``parallel.init_model_parallel(cfg.tp, cfg.pp)``); not yet DDP-wrapped. ``vocab_size``: the
    real (HF) vocabulary; padded logit columns beyond it never count. ``loss``: the loss's scalars,
    built once by ``algo.build_objective`` (``RedObjective.params``); LossParams() when not given.
    """

    def __init__(self, chunks: list, cfg: PolicyConfig, *, groups: ParallelGroups, vocab_size: int,
                 hf_dir: str | None = None, pad_id: int = 0, loss: LossParams | None = None):
        from megatron.core.utils import get_model_config

        if not chunks:
            raise ValueError("MegatronPolicy needs at least one model chunk")
        if (groups.tp_size, groups.pp_size, groups.cp_size, groups.ep_size) != (cfg.tp, cfg.pp, cfg.cp, cfg.ep):
            raise ValueError(f"the model-parallel groups are tp={groups.tp_size} pp={groups.pp_size} "
                             f"cp={groups.cp_size} ep={groups.ep_size}, PolicyConfig asks for policy.tp={cfg.tp} "
                             f"policy.pp={cfg.pp} policy.cp={cfg.cp} policy.ep={cfg.ep}")
        # the layout of the chunks as built (from_hf builds them from cfg.use_sequence_parallel)
        self.sequence_parallel = bool(get_model_config(chunks[0]).sequence_parallel)
        self.groups = groups
        self.cfg = cfg
        self.loss = LossParams() if loss is None else loss
        if not isinstance(self.loss, LossParams):
            raise ValueError(f"MegatronPolicy(loss=...) expects an algo.LossParams, got {type(loss).__name__}")
        self.vocab_size = int(vocab_size)
        self.hf_dir = hf_dir
        self.pad_id = int(pad_id)
        mcfg = get_model_config(chunks[0])
        # Loss scaling: SUM over micro-batches and DP ranks (passes.py module doc).
        mcfg.calculate_per_token_loss = True
        mcfg.finalize_model_grads_func = finalize_grads_sum
        if cfg.pp > 1:  # packed micro-batches differ in length: stages exchange shapes first
            mcfg.variable_seq_lengths = True
            if mcfg.pipeline_dtype is None:
                mcfg.pipeline_dtype = _DTYPES[cfg.dtype]
        if cfg.fused_lm_head:  # the output layer hands out hidden states; the loss applies the head (passes.py)
            from red_megatron.policy.model import hidden_lm_head

            for c in chunks:
                if c.post_process:
                    hidden_lm_head(c.output_layer)
        self.ddp = wrap_ddp(chunks, use_distributed_optimizer=cfg.use_distributed_optimizer)
        mcfg.no_sync_func = [m.no_sync for m in self.ddp] if len(self.ddp) > 1 else self.ddp[0].no_sync
        self.optimizer = build_optimizer(self.ddp, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        if cfg.fused_lm_head:
            self._red_loss, self._logprob_entropy = resolve_fused_head_impl(cfg.loss_impl, fp32_matmul=cfg.lm_head_fp32)
        else:
            self._red_loss, self._logprob_entropy = resolve_loss_impl(cfg.loss_impl)

    # --- construction from a Hugging Face directory ------------------------------------------------
    @classmethod
    def from_hf(cls, hf_dir, cfg: PolicyConfig, *, seed: int | None = None,
                loss: LossParams | None = None) -> "MegatronPolicy":
        """Initialise model parallelism (cfg.tp, cfg.pp), build the model from ``hf_dir``'s
        config.json and load its safetensors (each rank reads only its own shards)."""
        from red_megatron.policy import convert, model
        from red_megatron.hf.config import read_hf_config
        from red_megatron.policy import parallel

        if parallel.is_initialized():  # e.g. a test's worker pool initialised the groups already
            groups = parallel.current()
        else:
            groups = parallel.init_model_parallel(tp=cfg.tp, pp=cfg.pp, cp=cfg.cp, ep=cfg.ep,
                                                  seed=cfg.seed if seed is None else seed)
        hf = read_hf_config(hf_dir)
        chunks = model.build_model(hf_dir, groups=groups, dtype=_DTYPES[cfg.dtype],
                                   options=model.ModelOptions(sequence_parallel=cfg.use_sequence_parallel),
                                   lm_head_fp32=cfg.lm_head_fp32 and not cfg.fused_lm_head,
                                   moe=model.MoEOptions(aux_loss_coeff=cfg.moe_aux_loss_coeff,
                                                        router_fp32=cfg.moe_router_fp32))
        convert.load_hf_weights(chunks, hf_dir, groups=groups)
        return cls(chunks, cfg, groups=groups, vocab_size=hf.vocab_size, hf_dir=str(hf_dir),
                   pad_id=hf.pad_token_id, loss=loss)

    # --- accessors ----------------------------------------------------------------------------------
    @property
    def chunks(self) -> list:
        """The unwrapped model chunks (GPTModel), e.g. for weight export."""
        return [m.module for m in self.ddp]

    @property
    def lr(self) -> float:
        return current_lr(self.optimizer)

    @property
    def num_updates(self) -> int:
        return int(self.scheduler.num_steps)

    def set_peak_lr(self, lr: float) -> None:
        """Change the schedule's peak lr (min lr follows cfg.min_lr_ratio), e.g. for a preset."""
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.scheduler.max_lr, self.scheduler.min_lr = float(lr), float(lr) * self.cfg.min_lr_ratio
        for g in self.optimizer.param_groups:
            g["max_lr"], g["min_lr"] = self.scheduler.max_lr, self.scheduler.min_lr
        self.scheduler.step(0)

    def micro_batches(self, batch: SequenceBatch):
        """This rank's micro-batches: planned on whole sequences, then cut to this CP rank's chunks and
        padded for sequence parallelism (context_parallel.localize_micro_batch)."""
        g, sp = self.groups, self.sequence_parallel
        # the budget is per rank: with CP a rank computes 1/cp of each sequence (plus its padding to 2·cp)
        mbs = plan_micro_batches(batch, max_tokens=self.cfg.micro_batch_tokens * g.cp_size,
                                 pack=self.cfg.pack_sequences, pad_id=self.pad_id)
        if g.cp_size > 1 or sp:
            mbs = [localize_micro_batch(mb, cp_rank=g.cp_rank, cp_size=g.cp_size, tp_multiple=g.tp_size if sp else 1,
                                        pad_id=self.pad_id) for mb in mbs]
        if g.ep_size > 1:
            mbs = self._equalize_over_experts(mbs)
        return mbs

    def _equalize_over_experts(self, mbs: list) -> list:
        """Expert-parallel peers (other DP ranks) run every MoE layer's dispatch together: the same number of
        micro-batches, and (megatron's allgather dispatcher gathers equal shapes) the same tokens in each.
        Shorter ones get a padding-only sequence, missing ones are padding only (no loss, no log-probs)."""
        import torch.distributed as dist

        g = self.groups
        if not self.cfg.pack_sequences:
            raise ValueError("policy.ep > 1 needs policy.pack_sequences=true (expert-parallel peers need equal "
                             "micro-batch shapes)")
        lengths = [int(mb.tokens_BS.shape[1]) for mb in mbs]
        counts = torch.tensor([len(mbs)], dtype=torch.long, device=g.device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX, group=g.ep_group)
        n = int(counts.item())
        mine = torch.zeros(n, dtype=torch.long, device=g.device)
        mine[:len(lengths)] = torch.tensor(lengths, dtype=torch.long, device=g.device)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=g.ep_group)
        from red_megatron.policy.batching import pad_packed

        return [pad_packed(mbs[i] if i < len(mbs) else None, int(mine[i]), self.pad_id) for i in range(n)]

    def step_batch(self, tokens, prompt_lens=None) -> StepBatch:
        """The step's batch: sequences, this rank's micro-batch plan and its tensors on the device,
        built once and passed to both ``logprobs_and_entropy`` and ``train_step`` (a StepBatch is
        returned as is)."""
        if isinstance(tokens, StepBatch):
            if prompt_lens is not None:
                raise ValueError("prompt_lens must be None when tokens is a StepBatch (it holds them)")
            return tokens
        seqs = _as_batch(tokens, prompt_lens)
        return StepBatch(sequences=seqs, micro_batches=tuple(mb.to(self.groups.device) for mb in self.micro_batches(seqs)))

    # --- passes --------------------------------------------------------------------------------------
    def logprobs_and_entropy(self, tokens, prompt_lens=None, temperature: float | None = None, *,
                             routing: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logp_N, entropy_N) fp32 on the CPU, no grad (old-policy pass). ``tokens``: a StepBatch or
        sequences with ``prompt_lens``; ``temperature``: the loss's (``self.loss``) unless given.
        ``routing``: per sequence, the experts to replay in the MoE layers (policy/routing_replay.py)."""
        batch = self.step_batch(tokens, prompt_lens)
        temperature = self.loss.temperature if temperature is None else float(temperature)
        with self._replay(batch, routing):
            logp, ent = logprob_pass(self.ddp, batch, groups=self.groups, vocab_size=self.vocab_size,
                                     temperature=temperature, logprob_entropy=self._logprob_entropy,
                                     fused_head=self.cfg.fused_lm_head)
        return logp.cpu(), ent.cpu()

    def _replay(self, batch, routing):
        from red_megatron.policy.routing_replay import replay

        return replay(self.ddp, batch, routing, groups=self.groups, sequence_parallel=self.sequence_parallel)

    def train_step(self, tokens, prompt_lens=None, terms=None, logp_old_N: torch.Tensor | None = None, *,
                   ref_logp_N: torch.Tensor | None = None, routing: list | None = None) -> dict[str, float]:
        """One optimiser update on the RED loss of this batch (all micro-batches), with ``self.loss``.

        ``tokens``: the StepBatch of the old-policy pass (or sequences with ``prompt_lens``).
        ``terms``: ``algo.TokenTerms`` or a mapping of its fields (kind_N, adv_N, rbar_N, w_N,
        weight_N; weight_N carries every normaliser incl. DP: micro-batch and DP losses are SUMMED).
        ``logp_old_N``: the old-policy pass's log-probs, or None for on-policy: the ratio's denominator
        is this forward's own detached log-prob, exactly what the pass gives when this update is the
        only one on the batch and the weights are the ones that pass would read (no staleness
        correction). Returns loss, grad_norm (pre-clip), lr (of this update), clip_frac, skipped (1.0
        when the loss or grad norm was NaN/Inf: weights, optimizer state and schedule are left
        untouched), micro_batches, seconds; with ``logp_old_N=None`` also ``token_outputs``: the
        forward's (logp_N, entropy_N), fp32 on the CPU in N order, as ``logprobs_and_entropy`` returns.
        An MoE model also returns ``moe/...`` expert-load metrics (policy/moe.py ``ExpertLoad``, over the
        DP replicas) and replays ``routing`` (per sequence) in its routed layers when given.
        """
        t0 = time.perf_counter()
        if terms is None:
            raise ValueError("train_step needs terms= (algo.TokenTerms of this batch)")
        batch = self.step_batch(tokens, prompt_lens)
        if self.loss.kl_coef != 0.0 and ref_logp_N is None:
            raise ValueError("ref_logp_N is required when kl_coef != 0")
        terms = TokenTerms.of(terms).with_logp(logp_old_N, ref_logp_N)
        if terms.num_tokens != batch.num_tokens:
            raise ValueError(f"terms: expected one value per response token (N={batch.num_tokens}), "
                             f"got {terms.num_tokens}")
        zero_grads(self.ddp, self.optimizer)
        on_policy = logp_old_N is None
        from red_megatron.policy.moe import ExpertLoad

        with self._replay(batch, routing), ExpertLoad(self.chunks, self.cfg.moe_aux_loss_coeff) as load:
            stats = train_pass(self.ddp, batch, terms.to(self.groups.device), groups=self.groups,
                               vocab_size=self.vocab_size, params=self.loss, red_loss=self._red_loss,
                               grad_in_forward=self.cfg.grad_in_forward, token_outputs=on_policy,
                               fused_head=self.cfg.fused_lm_head)
        step = optimizer_step(self.optimizer, self.scheduler, clip_grad=self.cfg.clip_grad,
                              loss_finite=stats["loss_finite"])
        out = {"loss": stats["loss"], "grad_norm": step["grad_norm"], "lr": step["lr"],
               "clip_frac": stats["clip_frac"], "skipped": step["skipped"],
               "micro_batches": float(len(batch.micro_batches)), "seconds": time.perf_counter() - t0}
        if load.layers:
            out.update(load.reduce(self.groups, sequence_parallel=self.sequence_parallel).metrics())
        if on_policy:
            out["token_outputs"] = (stats["logp_N"].cpu(), stats["entropy_N"].cpu())
        return out

    def frozen_reference(self):
        """A no-grad copy of the weights this policy was built from (``hf_dir``), in its layout: the frozen
        reference of Rollout DPO (policy/reference.py)."""
        from red_megatron.policy.reference import FrozenReference

        if self.hf_dir is None:
            raise ValueError("frozen_reference: this policy was not built from an HF directory (from_hf)")
        return FrozenReference(self.hf_dir, groups=self.groups, dtype=_DTYPES[self.cfg.dtype],
                               vocab_size=self.vocab_size, temperature=self.loss.temperature,
                               logprob_entropy=self._logprob_entropy, sequence_parallel=self.sequence_parallel,
                               lm_head_fp32=self.cfg.lm_head_fp32)

    # --- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, root, step: int, trainer_state: dict | None = None) -> Path:
        return save_checkpoint(root, step, chunks=self.ddp, groups=self.groups, optimizer=self.optimizer,
                               scheduler=self.scheduler, trainer_state=trainer_state, sharding_type=self.cfg.checkpoint_sharding,
                               keep_last=self.cfg.keep_last_checkpoints or None)

    def load_checkpoint(self, path, *, load_optimizer: bool = True, load_rng: bool = True) -> LoadInfo:
        return load_checkpoint(path, chunks=self.ddp, groups=self.groups, optimizer=self.optimizer,
                               scheduler=self.scheduler, load_optimizer=load_optimizer, load_rng=load_rng)

    def load_latest_checkpoint(self, root) -> dict | None:
        """The trainer state of the newest complete checkpoint under ``root`` (None if there is none)."""
        if resolve_checkpoint(root) is None:
            return None
        return self.load_checkpoint(root).trainer_state

    # --- weights out (HF names), for the rollout refit and the final export ---------------------------
    def stream_hf_weights(self):
        from red_megatron.policy import convert

        return convert.stream_hf_weights(self.chunks, self._hf_config(), groups=self.groups)

    def hf_weight_specs(self):
        from red_megatron.policy import convert

        return convert.hf_weight_specs(self._hf_config())

    def export_hf(self, out_dir, *, tokenizer_dir=None) -> Path:
        from red_megatron.policy import convert

        return convert.export_hf(self.chunks, self._hf_config(), out_dir, groups=self.groups,
                                 tokenizer_dir=tokenizer_dir or self.hf_dir)

    def _hf_config(self):
        hf = getattr(self.chunks[0], "hf_config", None)  # set by model.build_model
        if hf is None and self.hf_dir is None:
            raise ValueError("this policy's model was not built by model.build_model: no HF names to export")
        return hf if hf is not None else self.hf_dir

