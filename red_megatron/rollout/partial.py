"""Streaming partial rollouts: engines never wait for the slowest sample (docs/ASYNC.md §7).

``rollout.partial=true`` (disaggregated engines, ``rollout.max_staleness`` k >= 1). Rank 0 runs a
*generation loop* in a thread of its own, beside the trainer:

    loop:  apply the newest queued refit (if any)        between two segments: the engines' weights change
           restart samples that can no longer be trained   (their oldest token more than k versions old)
           top up: draw global batch b once the engines are at version b - k (it trains at step >= b)
           one *segment*: every unfinished sample grows by at most ``partial_chunk_tokens`` tokens
           a prompt whose G samples all finished joins the ready queue (completion order)

    take(s): the first B ready groups whose every token is at most k versions behind step s

A sample therefore spans as many policy versions as refits landed while it grew. A segment is an
engine call that continues each sample from its prompt and the tokens it already has (vLLM prefills
that prefix under the current weights; prefix caching makes it cheap while the weights stay), so the
engine-level pause/resume needs no engine internals and every token's behaviour log-prob is exactly
log π_v(y_t | x, y_<t) under the version v that sampled it. Every token carries that version and that
log-prob (``Experience.token_versions`` / ``engine_logp``); the off-policy weight (algo/off_policy.py:
decoupled PPO + TIS) is per token against it.

The staleness bound is per token: a group is trained at step s only if ``s - v <= k`` for every token's
version v. A refit that makes a sample's oldest token too old restarts that sample from its prompt
(``async/restarted_samples``, ``async/discarded_tokens``), in flight or already finished; with
``rollout.stale_samples='mask'`` it is kept and the trainer gives its too-old tokens weight 0
(``offpolicy/stale_masked_tokens``; the trainer applies that mask in every case, as a guard).

Offline traces have no behaviour version: they are attached at take time, from the dataset, and their
loss term reads the current π_old (RED's offline ratio has no behaviour policy), so they count as
on-policy (version -1 in the experience, outside every staleness statistic).

Checkpoints: the loader's position after the last batch drawn, and the dataset indices of every group
drawn but not yet trained (``pending``). A resume regenerates those groups from their prompts first;
partial samples in flight are discarded, never trained twice. Unlike the lock-step loop this one is not
bit-reproducible: where a refit lands within a sample depends on timing.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from red_megatron.experience import Experience, assemble_experience, score_experience
from red_megatron.rollout.disaggregated import DisaggregatedRollout
from red_megatron.rollout.engine import RolloutSample

log = logging.getLogger("red_megatron.rollout.partial")


@dataclass
class _Sample:
    tokens: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish: str | None = None  # None while it grows
    segments: int = 0
    restarts: int = 0
    routing: object = None  # MoE with rollout.return_routing: the newest segment's [tokens, layers, topk]

    def grow(self, tokens, logp, version: int, routing=None) -> None:
        """One segment's tokens, sampled by policy ``version``. The routing kept is the newest segment's: that
        segment prefilled the prompt and every earlier token under ``version``, then sampled its own, so its
        routing is one forward of one policy over the whole sample (docs/MOE.md: what each token carries)."""
        self.tokens += list(tokens)
        self.logp += list(logp)
        self.versions += [int(version)] * len(tokens)
        self.segments += 1
        if routing is not None:
            self.routing = routing

    def restart(self) -> int:
        dropped = len(self.tokens)
        self.tokens, self.logp, self.versions, self.finish, self.routing = [], [], [], None, None
        self.restarts += 1
        return dropped


@dataclass
class _Group:
    index: int  # dataset index (what a checkpoint's ``pending`` holds)
    example: object
    draw: int  # draw order: seeds the samples
    samples: list[_Sample]

    @property
    def done(self) -> bool:
        return all(s.finish is not None for s in self.samples)

    def oldest(self) -> int:
        return min((min(s.versions) for s in self.samples if s.versions), default=1 << 62)


class PartialRollout(DisaggregatedRollout):
    def __init__(self, cfg, **kw):
        super().__init__(cfg, **kw)
        from red_megatron.data.loader import PromptLoader

        self.chunk = cfg.rollout.partial_chunk_tokens
        self.mask_stale = cfg.rollout.stale_samples == "mask"
        self.B = cfg.data.global_batch_size
        self._cond = threading.Condition()
        self._inflight: list[_Group] = []  # draw order
        self._ready: list[_Group] = []  # completion order
        self._requeue: list[int] = []  # dataset indices a resume regenerates first
        self._pending_refit = None
        self._stop = False
        self._failed: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._draws = 0
        self._trained = 0  # groups handed to the trainer (a resume starts at step · B)
        self.engine_version = 0
        self._counts = {"restarted_samples": 0, "discarded_tokens": 0, "segments": 0}
        # rank 0 draws whole global batches itself (the per-replica loaders stay unused): the groups a step
        # trains are the first to complete, whichever replica's slice they were drawn in
        self.global_loader = PromptLoader(self.loader.dataset, cfg.data, dp_rank=0, dp_world_size=1) \
            if self.g.rank == 0 else None

    # --- the trainer's side -------------------------------------------------------------------------------
    def take(self, step: int) -> Experience:
        g = self.g
        parts = info = None
        if g.rank == 0:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="partial-rollouts", daemon=True)
                self._thread.start()
            t0 = time.perf_counter()
            groups = self._wait_for_groups(step)
            t1 = time.perf_counter()
            self.timeline.add("trainer", "rollout wait", t0, t1, step)
            exp = self._experience(groups)
            self.timeline.add("trainer", "verify", t1, time.perf_counter(), step)
            per = self.B // g.dp_size  # replica j trains the j-th contiguous share of the groups taken
            parts = self._per_rank(exp, [[gr.example for gr in groups[j * per:(j + 1) * per]]
                                         for j in range(g.dp_size)])
            info = self._take_metrics(exp, step, t1 - t0)
        exp, self._info = self._distribute(parts, info)
        return exp

    def _wait_for_groups(self, step: int) -> list[_Group]:
        if self.mask_stale:  # the trainer gives too-old tokens weight 0: any complete group will do
            usable = lambda gr: True  # noqa: E731
        else:
            usable = lambda gr: step - gr.oldest() <= self.k  # noqa: E731 - every token at most k behind
        timeout = self.cfg.rollout.timeout_s
        with self._cond:
            ok = self._cond.wait_for(lambda: self._failed is not None or
                                     sum(map(usable, self._ready)) >= self.B, timeout=timeout)
            if self._failed is not None:
                raise self._failed
            if not ok:
                raise TimeoutError(f"partial rollouts: fewer than {self.B} complete prompt groups within "
                                   f"rollout.timeout_s={timeout:.0f} s for step {step + 1} ({len(self._ready)} ready, "
                                   f"{len(self._inflight)} in flight, engines at version {self.engine_version})")
            chosen = [gr for gr in self._ready if usable(gr)][:self.B]
            self._ready = [gr for gr in self._ready if gr not in chosen]
            self._trained += len(chosen)
            self._cond.notify_all()  # room for the next draw
        return chosen

    def _experience(self, groups: list[_Group]) -> Experience:
        samples = [[RolloutSample(token_ids=list(s.tokens), logprobs=list(s.logp), finish_reason=s.finish,
                                  versions=list(s.versions), routed_experts=s.routing) for s in gr.samples]
                   for gr in groups]
        exp = assemble_experience([gr.example for gr in groups], samples, with_offline=self.with_offline)
        return score_experience(exp, score=self.scorer.score,
                                decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))

    def _take_metrics(self, exp: Experience, step: int, waited: float) -> dict:
        online = [v for v in exp.token_versions if v is not None]
        tokens = [step - x for v in online for x in v]
        spans = [len(set(v)) for v in online]
        for v in online:
            st = step - min(v)
            self.timeline.staleness_hist[st] = self.timeline.staleness_hist.get(st, 0) + 1
        for sp in spans:
            self.timeline.span_hist[sp] = self.timeline.span_hist.get(sp, 0) + 1
        with self._cond:
            counts, self._counts = self._counts, dict.fromkeys(self._counts, 0)
        return {"async/staleness": max(tokens), "async/staleness_mean": sum(tokens) / len(tokens),
                "async/policy_version": min(min(v) for v in online), "async/version_span_max": max(spans),
                "async/spanning_samples": sum(sp > 1 for sp in spans), "time/rollout_wait": waited,
                **{f"async/{k}": v for k, v in counts.items()}}

    def _queue_refit(self, staged: dict, version: int, step: int) -> None:
        with self._cond:  # only the newest weights matter: an older queued refit is superseded
            self._pending_refit = (staged, version, step)
            self._cond.notify_all()

    def loader_state(self, step: int) -> dict:
        if self.g.rank != 0:
            return self.loader.state_dict()
        with self._cond:
            state = dict(self.global_loader.state_dict())
            state["pending"] = self._requeue + [gr.index for gr in sorted(self._inflight + self._ready,
                                                                          key=lambda gr: gr.draw)]
        return state

    def resume(self, step: int, loader_state: dict) -> None:
        state = dict(loader_state)
        pending = [int(i) for i in state.pop("pending", [])]
        self.loader.load_state_dict(state)
        if self.g.rank == 0:
            self.global_loader.load_state_dict(state)
            self._requeue, self._trained = pending, step * self.B
            log.info("partial rollouts: resuming at step %d; %d drawn but untrained prompts regenerate first",
                     step, len(pending))

    def finish(self) -> None:
        if self._failed is not None:
            raise self._failed

    def close(self, run_dir=None) -> None:
        if self.g.rank == 0:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
        # the engines first: a segment in flight then fails at once instead of holding the join for timeout_s
        super().close(run_dir)
        if self._thread is not None:
            self._thread.join(timeout=30.0)

    # --- the generation loop (rank 0's thread) ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stop or self._pending_refit is not None or self._has_work(),
                                        timeout=1.0)
                    if self._stop:
                        return
                    refit, self._pending_refit = self._pending_refit, None
                if refit is not None:
                    self._apply_refit(*refit)
                self._top_up()
                work = [(gr, j) for gr in self._inflight for j, s in enumerate(gr.samples) if s.finish is None]
                if work:
                    self._segment(work)
        except BaseException as exc:  # noqa: BLE001 - reported to the trainer by take()
            if self._stop:  # the engines were stopped under a segment: the run is ending, not failing
                return
            log.error("partial rollouts: the generation loop failed: %s", exc)
            with self._cond:
                self._failed = exc
                self._cond.notify_all()

    def _has_work(self) -> bool:
        return any(s.finish is None for gr in self._inflight for s in gr.samples) or self._room()

    def _room(self) -> bool:
        """Batch b (counted from the run's start) is trained at step b at the earliest; started before the
        engines reach version b - k, it would be more than k versions old there: wasted. So a batch is drawn
        once the engines are at b - k, which also bounds the groups in flight to (k+1)·B."""
        drawn = len(self._inflight) + len(self._ready)
        b = (self._trained + drawn) // self.B
        return b <= self.engine_version + self.k and b < self.steps

    def _top_up(self) -> None:
        with self._cond:
            while self._room():
                if self._requeue:
                    take, self._requeue = self._requeue[:self.B], self._requeue[self.B:]
                    batch = [(i, self.loader.dataset[i]) for i in take]
                else:
                    batch = [(ex.index, ex) for ex in self.global_loader.next_batch()]
                for i, ex in batch:
                    self._inflight.append(_Group(index=int(i), example=ex, draw=self._draws,
                                                 samples=[_Sample() for _ in range(self.sampling.n)]))
                    self._draws += 1

    def _apply_refit(self, staged: dict, version: int, step: int) -> None:
        self._refit_job(staged, version, step)
        with self._cond:
            self.engine_version = version
            if self.mask_stale:
                return
            # the earliest step a sample not yet taken can train at is `version`: one older than k is dead weight
            for gr in list(self._ready):
                if version - gr.oldest() > self.k:
                    self._ready.remove(gr)
                    self._inflight.append(gr)
            for gr in self._inflight:
                for s in gr.samples:
                    if s.versions and version - min(s.versions) > self.k:
                        self._counts["discarded_tokens"] += s.restart()
                        self._counts["restarted_samples"] += 1

    def _segment(self, work: list) -> None:
        sp = self.sampling
        reqs = []
        for gr, j in work:
            s = gr.samples[j]
            reqs.append((gr.example.prompt_ids + s.tokens, min(self.chunk, sp.max_tokens - len(s.tokens)),
                         # a sample's segments and restarts each draw from a seed of their own
                         sp.seed_for(gr.draw * sp.n + j, s.restarts) * 101 + s.segments))
        replies = self._call_engines("extend", reqs, lambda share, e: dict(
            prefixes=[r[0] for r in share], max_tokens=[r[1] for r in share], seeds=[r[2] for r in share],
            temperature=sp.temperature, top_p=sp.top_p), step=self.engine_version)
        outs = [(out, rep["version"]) for _, rep in replies for out in rep["samples"]]
        with self._cond:
            self._counts["segments"] += 1
            for (gr, j), (wire, rep_version) in zip(work, outs, strict=True):
                s, seg = gr.samples[j], RolloutSample.from_wire(wire)
                s.grow(seg.token_ids, seg.logprobs, rep_version, seg.routed_experts)
                if seg.finish_reason == "stop" or len(s.tokens) >= sp.max_tokens:
                    s.finish = "stop" if seg.finish_reason == "stop" else "length"
            done = [gr for gr in self._inflight if gr.done]
            if done:
                self._inflight = [gr for gr in self._inflight if not gr.done]
                self._ready += done
                self._cond.notify_all()
