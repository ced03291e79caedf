"""The RED loop. One step, as the paper runs it (RED_SPEC.md "One step"):

    examples  = loader.next_batch()                         this DP rank's prompts
    exp       = rollout G samples + the offline trace, verify   steps 1-2   (experience.py)
    logp, H   = policy.logprobs_and_entropy(exp)             step 3      (old policy, no grad)
    w         = regulator(H^rl, H^sft)  over the global batch  step 4      (RED part I)
    terms     = advantages, r̄, per-token kinds and weights     steps 2, 5, 6 (RED part II)
    metrics  |= policy.train_step(exp, terms)                step 6-7    (one optimiser step)
    refit the engine from the policy, log, checkpoint

Where the samples come from (engines in these processes, engine processes of their own at bounded
staleness, a recorded run) was chosen once, when the run was built: the loop sees one
``rollout/interface.Rollout`` (take / refit / close) and has no placement branches (docs/ASYNC.md).

Everything a preset changes was chosen once by ``build_objective``; the loop is the same for
all nine rows of the paper's Table 2. Staged presets (``sft_then_grpo``) run their stages one
after another, each from the previous stage's exported HF checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import torch

from red_megatron.algo import build_objective, entropy_partial_sums, entropy_stats_from_sums, sample_mean_entropy, step_metrics
from red_megatron.algo.presets import StagedPreset, get_preset
from red_megatron.config import RunConfig, check_world, save_run_config
from red_megatron.experience import Experience
from red_megatron.policy.routing_replay import step_routing
from red_megatron.metrics import MetricsLogger
from red_megatron.rollout.interface import build_rollout

log = logging.getLogger("red_megatron.trainer")


@contextlib.contextmanager
def _timed(times: dict[str, float], stage: str, timeline=None, step: int = 0):
    """Wall time of one stage of the step, as the metric ``time/<stage>`` (and on the run's timeline)."""
    t0 = time.perf_counter()
    yield
    t1 = time.perf_counter()
    times[f"time/{stage}"] = t1 - t0
    if timeline is not None:
        timeline.add("trainer", stage, t0, t1, step)


def train(cfg: RunConfig) -> dict:
    """Run ``cfg`` to the end (resuming when a checkpoint exists); returns the final metrics."""
    from red_megatron.run_control import StopSignals, prepare_run_dir, run_dir_lock

    preset = get_preset(cfg.algo.preset)
    if isinstance(preset, StagedPreset):
        return _train_stages(cfg, preset)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with run_dir_lock(cfg.run_dir, enabled=rank0):
        prepare_run_dir(cfg.run_dir, resume=cfg.resume, overwrite=cfg.overwrite, rank0=rank0)
        with StopSignals() as stop:
            return _Run(cfg, stop=stop).run()


def _train_stages(cfg: RunConfig, preset: StagedPreset) -> dict:
    model_dir, out = cfg.model_dir, {}
    for i, stage in enumerate(preset.stages):
        stage_cfg = dataclasses.replace(
            cfg, name=f"{cfg.name}/{stage.name}", run_dir=str(Path(cfg.run_dir) / f"stage{i}_{stage.name}"),
            model_dir=model_dir, export_hf=True, algo=dataclasses.replace(cfg.algo, preset=stage.name))
        out = train(stage_cfg)
        model_dir = str(Path(stage_cfg.run_dir) / "hf")
    return out


class _Run:
    def __init__(self, cfg: RunConfig, stop=None):
        from transformers import AutoTokenizer

        from red_megatron.run_control import StopSignals

        from red_megatron.data.dataset import load_dataset
        from red_megatron.data.loader import PromptLoader
        from red_megatron.policy import MegatronPolicy
        from red_megatron.reward.scorer import RewardScorer

        self.cfg = cfg
        self.stop = stop if stop is not None else StopSignals()  # not entered: never set
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else \
            int(os.environ.get("WORLD_SIZE", "1"))
        check_world(cfg, world)  # the validator: before any model or engine is built
        self.preset = get_preset(cfg.algo.preset)
        self.objective = build_objective(cfg.algo)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model_dir)
        # an online-only preset (grpo) trains on prompt/answer files without traces
        data_cfg = cfg.data if cfg.data.require_trace is not None else \
            dataclasses.replace(cfg.data, require_trace=self.preset.reads_traces)
        self.dataset = load_dataset(data_cfg, self.tokenizer)
        # A preset may bring its own schedule (sft: lr 5e-5, 3 epochs); studies that compare presets
        # at equal budget turn that off (use_preset_schedule=false) and keep the run's lr and steps.
        own = cfg.use_preset_schedule
        epochs = self.preset.epochs if own else None
        self.steps = cfg.steps if epochs is None else epochs * (len(self.dataset) // cfg.data.global_batch_size)
        lr = self.preset.lr if own and self.preset.lr is not None else cfg.policy.lr
        policy_cfg = dataclasses.replace(cfg.policy, lr=lr, lr_decay_steps=max(self.steps, cfg.policy.warmup_steps + 1))
        # what a resume compares with the checkpoint's: the schedule applies anew, the batch cannot change
        self.schedule = {"steps": self.steps, "policy.lr": lr, "policy.warmup_steps": policy_cfg.warmup_steps,
                         "policy.lr_decay_steps": policy_cfg.lr_decay_steps, "policy.min_lr_ratio": policy_cfg.min_lr_ratio,
                         "data.global_batch_size": cfg.data.global_batch_size}
        self.resumed: dict = {}
        self.policy = MegatronPolicy.from_hf(cfg.model_dir, policy_cfg, seed=cfg.seed, loss=self.objective.params)
        self.groups = g = self.policy.groups
        self.loader = PromptLoader(self.dataset, cfg.data, dp_rank=g.dp_rank, dp_world_size=g.dp_size)
        self.scorer = RewardScorer(cfg.reward)
        # Helper processes start now, beside the engine's build, not inside the first step or first save:
        # the verifier workers (on the ranks that score) and megatron's checkpoint writer.
        if g.is_mp_src and cfg.replay_experience_dir is None:
            self.scorer.pool  # noqa: B018 - the property starts the workers; they report ready at the first score
        from red_megatron.policy.checkpoint import prestart_writer

        prestart_writer()
        a = cfg.algo  # decoupled PPO with truncated IS weights: on at k >= 1 unless algo.off_policy='none'
        stale = cfg.rollout.placement == "disaggregated" and cfg.rollout.max_staleness > 0
        # (not for DPO pairs: their coefficients come from the current weights, no behaviour-policy ratio)
        self.off_policy = self.preset.online and self.preset.online_term == "clip" and \
            (a.off_policy == "tis" or (a.off_policy == "auto" and stale))
        # The no-grad old-policy pass is exactly redundant when nothing needs its numbers before the update:
        # one update per batch makes π_old the weights the update's own forward reads (algo.old_logprobs).
        self.old_pass = a.old_logprobs == "always" or self.objective.regulator is not None or self.off_policy
        # Rollout DPO: the frozen policy of the stage's start (model_dir, also on resume) scores every sample,
        # and the pair margins need the policy's own log-probs before the update
        self.reference = self.policy.frozen_reference() if self.objective.needs_reference else None
        self.old_pass = self.old_pass or self.reference is not None
        if not self.old_pass:
            log.info("old-policy pass skipped (%s: no entropy rule, no off-policy weight): the update's forward "
                     "gives π_old and the entropies", cfg.algo.preset)
        self.rollout = build_rollout(cfg, groups=g, policy=self.policy, preset=self.preset, loader=self.loader,
                                     tokenizer=self.tokenizer, scorer=self.scorer, steps=self.steps)
        self.evaluator = None
        if cfg.eval.every:
            from red_megatron.eval.in_training import TrainingEval

            engine = self.rollout.local_engine
            if not self.preset.online or cfg.rollout.placement != "colocated" or cfg.rollout.tp_infer != 1 or \
                    (g.rank == 0 and engine is None):
                raise ValueError(f"eval.every={cfg.eval.every} evaluates with rank 0's own engine: it needs an "
                                 f"online preset (not {cfg.algo.preset!r}), rollout.placement='colocated' and "
                                 f"rollout.tp_infer=1 (use red-eval on the exported checkpoints otherwise)")
            self.evaluator = TrainingEval(cfg, tokenizer=self.tokenizer, engine=engine, scorer=self.scorer,
                                          enabled=g.rank == 0)
        self.logger = MetricsLogger(cfg.run_dir, cfg.metrics, total_steps=self.steps, enabled=g.rank == 0,
                                    resume=cfg.resume)
        self.step = 0
        self.skipped_steps = 0
        self._skip_streak = 0  # steps in a row skipped in this process (not kept across a resume)
        self._saved_step = None  # the step of the checkpoint on disk that holds the current state
        self._maybe_resume()  # may refuse (another preset's checkpoint): then run_config.json stays as it was
        if g.rank == 0:
            save_run_config(cfg, cfg.run_dir, steps=self.steps, lr=lr, **self.resumed)

    # --- checkpoints --------------------------------------------------------------------------------
    def _trainer_state(self) -> dict:
        return {"step": self.step, "loader": self.rollout.loader_state(self.step), "objective": self.objective.state_dict(),
                "skipped_steps": self.skipped_steps, "preset": self.cfg.algo.preset, "schedule": self.schedule}

    def _maybe_resume(self) -> None:
        if not self.cfg.resume:
            return
        state = self.policy.load_latest_checkpoint(self.cfg.checkpoint_dir)
        if state is None:
            return
        if state["preset"] != self.cfg.algo.preset:
            raise ValueError(f"{self.cfg.checkpoint_dir}: the checkpoint is of preset {state['preset']!r}, this run "
                             f"is algo.preset={self.cfg.algo.preset!r}; use another run_dir or resume=false")
        self._check_schedule(state.get("schedule") or {}, int(state["step"]))
        self.step, self.skipped_steps = int(state["step"]), int(state["skipped_steps"])
        self.rollout.resume(self.step, state["loader"])
        self.objective.load_state_dict(state["objective"])
        self._saved_step = self.step
        self._refit(version=self.step)  # the engine must sample from the resumed weights
        log.info("resumed %s at step %d", self.cfg.checkpoint_dir, self.step)

    def _check_schedule(self, saved: dict, step: int) -> None:
        """A resume with another schedule applies it from the next update (the scheduler loads only its update
        count), and says so; another batch size cannot resume the data position: refused."""
        changed = {k: [saved[k], v] for k, v in self.schedule.items() if k in saved and saved[k] != v}
        if "data.global_batch_size" in changed:
            old, new = changed["data.global_batch_size"]
            raise ValueError(f"data.global_batch_size={new} differs from the checkpoint's {old} in "
                             f"{self.cfg.checkpoint_dir}: the data position cannot resume at another batch size; "
                             f"keep {old}, or start afresh (resume=false overwrite=true, or another run_dir)")
        self.resumed = {"resumed_at_step": step, **({"schedule_changed": changed} if changed else {})}
        # the optimizer's state carries each param group's peak lr: the run's replaces the checkpoint's
        self.policy.set_peak_lr(self.schedule["policy.lr"])
        if changed and self.groups.rank == 0:
            log.info("resume at step %d with another schedule than the checkpoint's, applied from update %d: %s",
                     step, step + 1, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))

    def _save(self) -> None:
        self.policy.save_checkpoint(self.cfg.checkpoint_dir, self.step, self._trainer_state())
        self._saved_step = self.step

    # --- the step -----------------------------------------------------------------------------------
    def _refit(self, version: int) -> dict:
        # a collective: every rank walks the policy's weights (the rollout may keep none of them)
        return self.rollout.refit(self.policy.stream_hf_weights(), version=version, step=self.step)

    def red_step(self) -> dict:
        cfg, obj, g = self.cfg, self.objective, self.groups
        times: dict[str, float] = {}
        tl = self.rollout.timeline
        since = time.perf_counter() - tl.t_start if tl is not None else 0.0
        with _timed(times, "rollout"):
            exp = self.rollout.take(self.step)
        tokens, prompt_lens = exp.sequences()
        response_len_B = exp.response_len_B
        tl = tl if g.rank == 0 else None
        with _timed(times, "old_logprobs", tl, self.step):
            batch = self.policy.step_batch(tokens, prompt_lens)  # planned once, used by both passes
            logp_old_N = entropy_N = stats = None
            routing = step_routing(cfg.algo.routing_replay, exp.routed_experts, exp.is_offline_B)
            if self.old_pass:
                logp_old_N, entropy_N = self.policy.logprobs_and_entropy(batch, routing=routing)
        if self.old_pass:  # RED part I: entropies over the global batch (every DP rank's samples), then w
            stats = self._entropy_stats(entropy_N, exp)
        w = obj.offline_weight(stats)  # without the pass: no regulator, so w is fixed_w or 1
        ref_logp_N = None
        if self.reference is not None:
            with _timed(times, "ref_logprobs", tl, self.step):
                ref_logp_N = self.reference.logprobs(batch)
        # Advantages, r̄ and the per-token kinds/weights, normalised by the global counts.
        n_pairs_local = obj.num_pairs(exp.rewards_B, exp.group_id_B, exp.is_offline_B)  # DPO pairs; 0 otherwise
        counts = torch.tensor([float(response_len_B.sum()), float(n_pairs_local)], dtype=torch.float64)
        n_tokens, n_pairs = (int(x) for x in g.dp_all_reduce(counts).tolist())
        terms, rbar_G, adv_B = obj.token_terms(exp.rewards_B, exp.group_id_B, exp.is_offline_B, response_len_B, w=w,
                                               num_prompts=cfg.data.global_batch_size, total_tokens=n_tokens,
                                               logp_N=logp_old_N, ref_logp_N=ref_logp_N, num_pairs=n_pairs)
        off_metrics = {}
        if self.off_policy:
            terms, off_metrics = self._off_policy_terms(exp, terms, logp_old_N)
        with _timed(times, "train", tl, self.step):
            upd = self.policy.train_step(batch, terms=terms, logp_old_N=logp_old_N, routing=routing)
        if not self.old_pass:  # the same numbers the pass would have given, from the update's forward
            logp_old_N, entropy_N = upd.pop("token_outputs")
            stats = self._entropy_stats(entropy_N, exp)
        self._skip_streak = self._skip_streak + 1 if upd["skipped"] else 0
        if upd["skipped"]:  # a NaN/Inf loss or gradient: the weights were left untouched
            self.skipped_steps += 1
            log.warning("step %d skipped: non-finite loss or gradient (%d skipped so far)", self.step + 1,
                        self.skipped_steps)
        with _timed(times, "refit"):
            refit_metrics = self._refit(version=self.step + 1)
        self.step += 1
        m = step_metrics(rewards_B=obj.rewards(exp.rewards_B, exp.is_offline_B), is_offline_B=exp.is_offline_B,
                         response_len_B=response_len_B, rbar_G=rbar_G, entropy=stats,
                         regulator_metrics=obj.regulator.metrics() if obj.regulator is not None else None, w=w)
        m.update({f"optim/{k}": v for k, v in upd.items()})
        m.update(self._gap_metrics(exp, logp_old_N))
        m.update(off_metrics)
        m.update(obj.last_metrics)
        m.update(refit_metrics)
        m.update(times)
        m.update(self.rollout.step_metrics(since))
        m["reward/mean"] = float(exp.rewards_B.mean())
        m["reward/verifier_timeouts"] = sum(r == "timeout" for r in exp.reward_reasons)
        m["data/traces_truncated"] = exp.traces_truncated
        m["train/skipped_steps"] = self.skipped_steps
        m["throughput/tokens_per_s"] = (sum(len(x) for x in tokens)) / max(1e-9, sum(times.values()))
        return m

    def _entropy_stats(self, entropy_N: torch.Tensor, exp: Experience):
        H_B = sample_mean_entropy(entropy_N, exp.response_len_B)
        sums = self.groups.dp_all_reduce(entropy_partial_sums(H_B, exp.is_offline_B))
        if not bool(torch.isfinite(sums).all()):  # the same sums on every DP rank: all refuse together
            from red_megatron.errors import UserError

            p = self.cfg.policy
            why = (f"its weights diverged in an earlier update (policy.lr={p.lr:g}, policy.clip_grad={p.clip_grad:g})"
                   if self.step else f"the model's outputs overflow in policy.dtype={p.dtype}")
            raise UserError(f"non-finite policy entropies in step {self.step + 1}: expected finite log-probs of "
                            f"the policy; {why}")
        return entropy_stats_from_sums(sums)

    def _off_policy_terms(self, exp: Experience, terms, logp_old_N: torch.Tensor):
        """TIS: ρ = min(π_old/π_behaviour, C) on the online tokens (algo/off_policy.py), folded into the terms."""
        from red_megatron.algo.off_policy import check_nonfinite_behaviour, off_policy_metrics, truncated_is_weights

        a, g = self.cfg.algo, self.groups
        old = torch.split(logp_old_N.detach().double().cpu(), [len(r) for r in exp.response_ids])
        behaviour_N = torch.cat([o if e is None else torch.tensor(e, dtype=torch.float64)
                                 for e, o in zip(exp.engine_logp, old)])
        w = truncated_is_weights(logp_old_N.detach().cpu(), behaviour_N, terms.is_offline_N, terms.sample_idx_N,
                                 len(exp.response_ids), cap=a.tis_cap, mask_bound=a.tis_mask_bound)
        maxes = torch.tensor([w.max_ratio, w.max_weight], dtype=torch.float64)
        if g.dp_size > 1:
            moved = maxes.to(g.device)
            torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.MAX, group=g.dp_group)
            maxes = moved.cpu()
        sums = g.dp_all_reduce(w.sums)
        check_nonfinite_behaviour(sums, a.tis_max_nonfinite, self.step + 1)  # every DP rank sees the same sums
        metrics = off_policy_metrics(sums, float(maxes[0]), float(maxes[1]))
        rho = w.is_weight_N
        if exp.token_versions:  # partial rollouts: no token more than k versions old is trained (weight 0)
            from red_megatron.algo.off_policy import stale_tokens

            stale = stale_tokens(exp.token_versions, [len(r) for r in exp.response_ids],
                                 oldest=self.step - self.cfg.rollout.max_staleness)
            rho = rho.masked_fill(stale, 0.0)
            count = torch.tensor([float(stale.sum())], dtype=torch.float64)
            metrics["offpolicy/stale_masked_tokens"] = float(g.dp_all_reduce(count).item())
        return terms.with_is_weight(rho), metrics

    @staticmethod
    def _gap_metrics(exp: Experience, logp_old_N: torch.Tensor) -> dict:
        """max/mean |logp_engine − logp_trainer| over the online tokens of this step."""
        per_seq = torch.split(logp_old_N.detach().double().cpu(), [len(r) for r in exp.response_ids])
        diffs = [(torch.tensor(e, dtype=torch.float64) - tr).abs() for e, tr in zip(exp.engine_logp, per_seq)
                 if e is not None]
        if not diffs:
            return {}
        d = torch.cat(diffs)
        return {"rollout/logp_gap_max": float(d.max()), "rollout/logp_gap_mean": float(d.mean())}

    def _stop_or_due(self, last_save: float) -> tuple[bool, bool]:
        """(a stop signal arrived, the timed checkpoint is due), agreed by every rank: a signal reaches the
        ranks at different moments, and each must stop (or save) after the same step."""
        minutes = self.cfg.checkpoint_every_minutes
        flags = torch.tensor([float(self.stop.received is not None),
                              float(bool(minutes) and time.monotonic() - last_save >= 60 * minutes)])
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            moved = flags.to(self.groups.device)
            torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.MAX)
            flags = moved.cpu()
        return bool(flags[0]), bool(flags[1])

    def _refuse_divergence(self) -> None:
        """A run that only skips steps trains nothing: stop after ``max_skipped_in_a_row`` of them, or at the end
        of a run whose every step (in this process) was skipped. The same decision on every rank (the skip is)."""
        n, limit = self._skip_streak, self.cfg.max_skipped_in_a_row
        ran = self.step - self._first_step
        if n == 0 or limit == 0 or not (n >= limit or (self.step == self.steps and n == ran)):
            return
        from red_megatron.errors import UserError

        kept = ("the weights are the starting ones" if self.step - n == 0
                else f"the weights are step {self.step - n}'s")
        raise UserError(f"training diverged: steps {self.step - n + 1}-{self.step} ({n} in a row) had a non-finite "
                        f"loss or gradient and were skipped ({kept}); lower policy.lr={self.cfg.policy.lr:g} or "
                        f"check the data, or raise max_skipped_in_a_row={limit} (0: never stop)")

    def run(self) -> dict:
        from red_megatron.run_control import RunInterrupted

        last: dict = {}
        last_save = time.monotonic()
        self._first_step = self.step
        try:
            if self.evaluator is not None and self.cfg.eval.at_start and self.step == 0:
                self.evaluator.run(0, self.steps)  # the starting weights: the engine holds model_dir's
            while self.step < self.steps:
                stop, due = self._stop_or_due(last_save)
                if stop or due:
                    if self._saved_step != self.step and self.step > 0:
                        self._save()
                    last_save = time.monotonic()
                if stop:
                    raise RunInterrupted(self.stop.received or "a signal on another rank", self.step, self.steps,
                                         self.cfg.checkpoint_dir)
                last = self.red_step()
                if self.evaluator is not None and self.evaluator.due(self.step, self.steps):
                    last.update(self.evaluator.run(self.step, self.steps))
                self.logger.log(self.step, last)
                self._refuse_divergence()
                if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 and self.step < self.steps:
                    self._save()
                    last_save = time.monotonic()
            self.rollout.finish()  # the last refit's failure, if any, is not lost
            if self._saved_step != self.step:  # nothing changed since the checkpoint it resumed from: keep it
                self._save()
            if self.cfg.export_hf:
                self.policy.export_hf(Path(self.cfg.run_dir) / "hf", tokenizer_dir=self.cfg.model_dir)
        finally:
            self.rollout.close(self.cfg.run_dir)
            self.logger.close()
            self.scorer.close()
        return last
