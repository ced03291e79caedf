"""Disaggregated, bounded-staleness rollouts for the trainer (docs/ASYNC.md).

Every trainer rank holds a :class:`RemoteRollout` and calls the same methods in the same order
(each is a collective over the trainer's world); only rank 0 talks to the engines. Rank 0 runs a
*driver*: one worker thread that executes the engine jobs in submission order (FIFO), so the
order of generations and refits is the order the loop submitted them in:

    step s:  submit(s + k)        prompts of batch s+k gathered to rank 0, generation queued
             take(s)              rank 0 waits for batch s, verifies it, hands each replica its part
             ... old log-probs, RED weights, update (engines keep generating meanwhile) ...
             refit(version s+1)   full weights gathered on every rank (policy.stream_hf_weights),
                                  staged on rank 0 and queued: broadcast to the engines in order

A generation queued after the refit of version v samples from v. Batch s+k is queued at step s,
after version s's refit, so it is trained at step s+k by version s+k: staleness k exactly (0 for
the first k batches, which start from the initial weights). ``k = 0`` queues, waits and refits in
the synchronous order: the colocated loop's numbers, bit for bit. A staleness above k cannot
arise in this lock-step pipeline; :meth:`take` checks it and refuses (an internal error) rather
than train on such a batch.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from red_megatron.experience import Experience, collect_experience
from red_megatron.rollout.engine import RolloutSample

log = logging.getLogger("red_megatron.async_rollout")


class Timeline:
    """(process, stage, t0, t1, step) intervals on rank 0's clock, for the timeline plot and busy/idle metrics."""

    def __init__(self):
        self.t_start = time.perf_counter()
        self.events: list[tuple[str, str, float, float, int]] = []
        self.staleness_hist: dict[int, int] = {}  # staleness -> online samples trained at it
        self._lock = threading.Lock()

    def add(self, process: str, stage: str, t0: float, t1: float, step: int) -> None:
        with self._lock:
            self.events.append((process, stage, t0 - self.t_start, t1 - self.t_start, step))

    def busy(self, since: float) -> dict[tuple[str, str], float]:
        """Seconds each (process, stage) was busy after ``since`` (rank 0 clock, relative)."""
        out: dict[tuple[str, str], float] = {}
        with self._lock:
            for proc, stage, t0, t1, _ in self.events:
                if t1 > since:
                    out[(proc, stage)] = out.get((proc, stage), 0.0) + t1 - max(t0, since)
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"events": [dict(process=p, stage=s, t0=a, t1=b, step=k)
                                              for p, s, a, b, k in self.events],
                                   "staleness_hist": {str(k): v for k, v in sorted(self.staleness_hist.items())}}))
        tmp.replace(path)


def _split(n: int, parts: int) -> list[int]:
    q, r = divmod(n, parts)
    return [q + (i < r) for i in range(parts)]


class RemoteRollout:
    def __init__(self, cfg, groups, policy, *, version: int, online: bool, with_offline: bool, tokenizer, scorer):
        self.cfg, self.g, self.k = cfg, groups, cfg.rollout.max_staleness
        self.online, self.with_offline, self.tokenizer, self.scorer = online, with_offline, tokenizer, scorer
        self.timeline = Timeline()
        self._jobs: dict[int, cf.Future] = {}
        self._failed: BaseException | None = None
        self.pool = self._driver = None
        self.version = version  # the newest version queued for the engines (rank 0's driver order)
        world = groups.world_size
        self._dp_of_rank = [groups.dp_rank] * world
        if world > 1:
            dist.all_gather_object(self._dp_of_rank, groups.dp_rank)
        if groups.rank == 0:
            from red_megatron.hf.config import read_config_json
            from red_megatron.rollout.engine import read_checkpoint_weights
            from red_megatron.rollout.pool import EnginePool
            from red_megatron.rollout.refit import RefitPlan

            r = cfg.rollout
            t0 = time.perf_counter()
            self.pool = EnginePool(cfg.model_dir, r, num_engines=r.num_engines, timeout_s=r.timeout_s,
                                   start_timeout_s=r.start_timeout_s)
            tied = bool(read_config_json(cfg.model_dir).get("tie_word_embeddings", False))
            plan = RefitPlan.build(policy.hf_weight_specs(), read_checkpoint_weights(cfg.model_dir),
                                   dtype=getattr(torch, r.dtype), bucket_bytes=int(cfg.refit_bucket_mb * 2**20),
                                   tie_word_embeddings=tied)
            self.pool.join_weights(plan)
            self.plan = plan
            for e, info in enumerate(self.pool.ping()):
                log.info("rollout engine %d up (pid %d)", e, info["pid"])
            self.timeline.add("trainer", "engine start", t0, time.perf_counter(), 0)
            self._driver = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-driver")

    # --- generation ---------------------------------------------------------------------------------
    def submit(self, batch: int, examples: list) -> None:
        """Collective: queue batch ``batch``'s generation (every replica's prompts) on rank 0's driver."""
        g = self.g
        box = [None] * g.world_size if g.rank == 0 else None
        if g.world_size > 1:
            dist.gather_object((g.dp_rank, examples), box, dst=0)
        else:
            box = [(g.dp_rank, examples)]
        if g.rank != 0:
            return
        by_replica = dict(box)
        replicas = [by_replica[d] for d in range(g.dp_size)]
        seed = self.cfg.seed * 1_000_003 + batch * 7919
        self._jobs[batch] = self._driver.submit(self._guarded, self._generate, batch, replicas, seed)

    def _guarded(self, fn, *args):
        """Driver jobs run in order; after one failed (a refit half done), every later one fails with it."""
        if self._failed is not None:
            raise self._failed
        try:
            return fn(*args)
        except BaseException as exc:
            self._failed = exc
            raise

    def _generate(self, batch: int, replicas: list[list], seed: int) -> dict:
        """Driver thread: the batch's prompts spread over the engines (contiguous shares), one call each."""
        a = self.cfg.algo
        flat = [ex for rep in replicas for ex in rep]
        samples: list = []
        if self.online:
            shares = [s for s in _split(len(flat), len(self.pool.engines)) if s > 0]
            per, lo = [], 0
            for e, n in enumerate(shares):  # engine e's seed is replica e's in the colocated loop
                per.append(dict(prompt_ids=[ex.prompt_ids for ex in flat[lo:lo + n]], n=a.num_online,
                                temperature=a.temperature, top_p=self.cfg.top_p,
                                max_tokens=self.cfg.data.max_response_tokens, seed=seed + e))
                lo += n
            t0 = time.perf_counter()
            replies = self.pool.call_all("generate", per)
            t1 = time.perf_counter()
            for e, rep in enumerate(replies):
                self.timeline.add(f"engine {e}", "rollout", t1 - rep["seconds"], t1, batch)
                samples += [[RolloutSample(token_ids=list(t), logprobs=list(lp), finish_reason=f) for t, lp, f in p]
                            for p in rep["samples"]]
            versions = {rep["version"] for rep in replies}
            assert len(versions) == 1, f"engines at different versions {versions}"
            version = versions.pop()
        else:
            version, t0, t1 = self.version, 0.0, 0.0
        return {"replicas": replicas, "samples": samples, "version": version, "wait_from": t0, "seconds": t1 - t0}

    def take(self, batch: int, step: int) -> tuple[Experience, dict]:
        """Collective: this replica's experience of batch ``batch``, trained at ``step`` (policy version ``step``)."""
        g = self.g
        parts = info = None
        if g.rank == 0:
            t0 = time.perf_counter()
            job = self._jobs.pop(batch).result()
            t1 = time.perf_counter()
            self.timeline.add("trainer", "rollout wait", t0, t1, step)
            staleness = step - job["version"]
            if not 0 <= staleness <= self.k:
                raise RuntimeError(f"batch {batch} was generated by policy version {job['version']}, {staleness} "
                                   f"behind step {step}: beyond rollout.max_staleness={self.k} (a driver bug)")
            exp = self._verify(job)
            n_online = sum(v >= 0 for v in exp.policy_version)
            self.timeline.staleness_hist[staleness] = self.timeline.staleness_hist.get(staleness, 0) + n_online
            t2 = time.perf_counter()
            self.timeline.add("trainer", "verify", t1, t2, step)
            sizes = [len(r) for r in job["replicas"]]
            truncated = [sum(int(ex.trace_truncated) for ex in r) * self.with_offline for r in job["replicas"]]
            per_replica = exp.split(sizes, truncated) if len(sizes) > 1 else [exp]
            parts = [per_replica[self._dp_of_rank[r]] for r in range(g.world_size)]
            info = {"async/staleness": staleness, "async/policy_version": job["version"],
                    "time/rollout_wait": t1 - t0}
        if g.world_size > 1:
            out = [None]
            dist.scatter_object_list(out, parts, src=0)
            box = [info]
            dist.broadcast_object_list(box, src=0)
            return out[0], box[0]
        return parts[0], info

    def _verify(self, job: dict) -> Experience:
        it = iter([job["samples"]])
        flat = [ex for rep in job["replicas"] for ex in rep]
        exp = collect_experience(
            flat, generate=lambda *a, **k: next(it), score=self.scorer.score,
            decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
            num_online=self.cfg.algo.num_online if self.online else 0, with_offline=self.with_offline,
            temperature=self.cfg.algo.temperature, top_p=self.cfg.top_p,
            max_response_tokens=self.cfg.data.max_response_tokens, seed=0)
        exp.policy_version = [-1 if off else job["version"] for off in exp.is_offline_B.tolist()]
        return exp

    # --- weights --------------------------------------------------------------------------------------
    def refit(self, stream, version: int, step: int) -> dict:
        """Collective (every rank walks ``stream``): queue version ``version`` for the engines after the
        generations already queued; at k = 0 wait for it (the synchronous loop)."""
        t0 = time.perf_counter()
        staged = {}
        for name, t in stream:
            if self.g.rank == 0 and name not in self.plan.ignored:
                staged[name] = t.detach().to(self.plan.dtype, copy=True)
        if self.g.rank != 0:
            return {}
        t1 = time.perf_counter()
        self.timeline.add("trainer", "refit gather", t0, t1, step)
        self.version = version
        fut = self._driver.submit(self._guarded, self._refit_job, staged, version, step)
        if self.k == 0:
            fut.result()
        return {"refit/gather_seconds": t1 - t0, "refit/buckets": len(self.pool.layout),
                "refit/gbytes": sum(t.numel() * t.element_size() for t in staged.values()) / 1e9}

    def _refit_job(self, staged: dict, version: int, step: int) -> dict:
        t0 = time.perf_counter()
        stats = self.pool.refit(staged, version)
        t1 = time.perf_counter()
        for e, sec in enumerate(stats["engine_seconds"]):
            self.timeline.add(f"engine {e}", "refit", t1 - sec, t1, step)
        self.timeline.add("driver", "refit broadcast", t0, t1, step)
        return stats

    def drain(self) -> None:
        """Rank 0: wait for the jobs still queued (the last refit), so that a failure there is reported."""
        if self.g.rank == 0 and self._driver is not None:
            self._driver.submit(self._guarded, lambda: None).result()

    def step_metrics(self, since: float) -> dict:
        """Busy seconds per process and stage since ``since`` (rank 0), and each engine's idle share."""
        if self.g.rank != 0:
            return {}
        now = time.perf_counter() - self.timeline.t_start
        busy = self.timeline.busy(since)
        m = {f"busy/{p.replace(' ', '')}/{s.replace(' ', '_')}": v for (p, s), v in busy.items()}
        for e in range(len(self.pool.engines)):
            b = sum(v for (p, _), v in busy.items() if p == f"engine {e}")
            m[f"idle/engine{e}_fraction"] = max(0.0, 1.0 - b / max(1e-9, now - since))
        return m

    def close(self, run_dir=None) -> None:
        if self.g.rank != 0:
            return
        try:
            if self._driver is not None:
                self._driver.shutdown(wait=False, cancel_futures=True)
        finally:
            if self.pool is not None:
                self.pool.close()
            if run_dir is not None:
                self.timeline.save(Path(run_dir) / "timeline.json")
