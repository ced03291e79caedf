"""Disaggregated, bounded-staleness rollouts for the trainer (docs/ASYNC.md).

Every trainer rank holds a :class:`DisaggregatedRollout` and calls the same methods in the same
order (each is a collective over the trainer's world); only rank 0 talks to the engines. Rank 0 runs
a *driver*: one worker thread that executes the engine jobs in submission order (FIFO), so the
order of generations and refits is the order the loop submitted them in:

    step s:  take(s)              queues batches up to s + k (each rank draws its replica's prompts,
                                  gathered to rank 0), then rank 0 waits for batch s, verifies it and
                                  hands each replica its part
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
import logging
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from red_megatron.experience import Experience, assemble_experience, score_experience
from red_megatron.rollout.engine import RolloutSample
from red_megatron.rollout.interface import Rollout
from red_megatron.rollout.timeline import Timeline

log = logging.getLogger("red_megatron.rollout.disaggregated")


def _split(n: int, parts: int) -> list[int]:
    q, r = divmod(n, parts)
    return [q + (i < r) for i in range(parts)]


class DisaggregatedRollout(Rollout):
    def __init__(self, cfg, *, groups, policy, loader, sampling, with_offline: bool, tokenizer, scorer, steps: int):
        self.cfg, self.g, self.k = cfg, groups, cfg.rollout.max_staleness
        self.loader, self.sampling, self.steps = loader, sampling, steps
        self.with_offline, self.tokenizer, self.scorer = with_offline, tokenizer, scorer
        self.timeline = Timeline()
        self._submitted = 0  # batches queued on the engines
        self._loader_after: dict[int, dict] = {}  # batch -> the loader's state after drawing it
        self._info: dict = {}  # the last take's metrics
        self._jobs: dict[int, cf.Future] = {}
        self._failed: BaseException | None = None
        self.pool = self._driver = None
        self.version = 0  # the newest version queued for the engines (rank 0's driver order)
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
            external = r.engine_launch == "external"
            host = socket.getfqdn() if r.listen_host == "auto" else r.listen_host
            if external:
                log.info("rollout: waiting for %d external engine(s): start them with `python -m "
                         "red_megatron.rollout.remote --join %s --index i`", r.num_engines,
                         Path(cfg.run_dir) / "engines")
            self.pool = EnginePool(cfg.model_dir, r, num_engines=r.num_engines, timeout_s=r.timeout_s,
                                   start_timeout_s=r.start_timeout_s, host=host, port=r.listen_port,
                                   join_dir=Path(cfg.run_dir) / "engines" if external else None)
            tied = bool(read_config_json(cfg.model_dir).get("tie_word_embeddings", False))
            plan = RefitPlan.build(policy.hf_weight_specs(), read_checkpoint_weights(cfg.model_dir),
                                   dtype=getattr(torch, r.dtype), bucket_bytes=int(cfg.rollout.refit_bucket_mb * 2**20),
                                   tie_word_embeddings=tied)
            self.pool.join_weights(plan)
            self.plan = plan
            for e, info in enumerate(self.pool.ping()):
                log.info("rollout engine %d up (pid %d)", e, info["pid"])
            self.timeline.add("trainer", "engine start", t0, time.perf_counter(), 0)
            self._driver = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-driver")

    # --- generation ---------------------------------------------------------------------------------
    def take(self, step: int) -> Experience:
        """Queue batches up to ``step + k`` (each replica's prompts), then this replica's part of batch ``step``."""
        last = min(step + self.k, self.steps - 1)
        while self._submitted <= last:
            examples = self.loader.next_batch()
            self._loader_after[self._submitted] = self.loader.state_dict()
            self._submit(self._submitted, examples)
            self._submitted += 1
        self._loader_after.pop(step - 2, None)
        exp, self._info = self._take(step, step=step)
        return exp

    def loader_state(self, step: int) -> dict:
        # with batches queued ahead the loader has moved past the last trained batch; the checkpoint holds
        # the state after the last trained one (batch step - 1), so a resume queues the rest again
        return self._loader_after.get(step - 1) or self.loader.state_dict()

    def resume(self, step: int, loader_state: dict) -> None:
        self.loader.load_state_dict(loader_state)
        self._submitted = step

    def _submit(self, batch: int, examples: list) -> None:
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
        self._jobs[batch] = self._driver.submit(self._guarded, self._generate, batch, replicas)

    def _guarded(self, fn, *args):
        """Driver jobs run in order; after one failed (a refit half done), every later one fails with it."""
        if self._failed is not None:
            raise self._failed
        try:
            return fn(*args)
        except BaseException as exc:
            self._failed = exc
            raise

    def _call_engines(self, op: str, items: list, args_of, step: int) -> list[tuple[list, dict]]:
        """Driver thread: ``items`` spread over the engines in contiguous shares, ``op`` called once on each
        engine with ``args_of(share, engine index)``; (share, reply) per engine that got items. ``step``: the
        timeline's label for the engines' busy intervals."""
        shares, lo = [], 0
        for n in _split(len(items), len(self.pool.engines)):
            if n > 0:
                shares.append(items[lo:lo + n])
                lo += n
        replies = self.pool.call_all(op, [args_of(share, e) for e, share in enumerate(shares)])
        t1 = time.perf_counter()
        for e, rep in enumerate(replies):
            self.timeline.add(f"engine {e}", "rollout", t1 - rep["seconds"], t1, step)
        return list(zip(shares, replies))

    def _generate(self, batch: int, replicas: list[list]) -> dict:
        """Driver thread: the batch's prompts spread over the engines, one call each; engine e is seeded as
        replica e is in the colocated loop."""
        flat = [ex for rep in replicas for ex in rep]
        t0 = time.perf_counter()
        done = self._call_engines("generate", flat, lambda share, e: self.sampling.engine_args(
            [ex.prompt_ids for ex in share], batch=batch, replica=e), step=batch)
        t1 = time.perf_counter()
        samples = [[RolloutSample.from_wire(s) for s in p] for _, rep in done for p in rep["samples"]]
        versions = {rep["version"] for _, rep in done}
        assert len(versions) == 1, f"engines at different versions {versions}"
        version = versions.pop()
        return {"replicas": replicas, "samples": samples, "version": version, "wait_from": t0, "seconds": t1 - t0}

    def _take(self, batch: int, step: int) -> tuple[Experience, dict]:
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
            parts = self._per_rank(exp, job["replicas"])
            info = {"async/staleness": staleness, "async/policy_version": job["version"],
                    "time/rollout_wait": t1 - t0}
        return self._distribute(parts, info)

    def _per_rank(self, exp: Experience, replicas: list[list]) -> list[Experience]:
        """Rank 0: the step's experience cut into its replicas' parts, one entry per trainer rank."""
        sizes = [len(r) for r in replicas]
        truncated = [sum(int(ex.trace_truncated) for ex in r) * self.with_offline for r in replicas]
        per_replica = exp.split(sizes, truncated) if len(sizes) > 1 else [exp]
        return [per_replica[self._dp_of_rank[r]] for r in range(self.g.world_size)]

    def _distribute(self, parts: list | None, info: dict | None) -> tuple[Experience, dict]:
        """Collective: each rank its part (rank 0 holds them all), every rank the step's info."""
        if self.g.world_size > 1:
            out = [None]
            dist.scatter_object_list(out, parts, src=0)
            box = [info]
            dist.broadcast_object_list(box, src=0)
            return out[0], box[0]
        return parts[0], info

    def _verify(self, job: dict) -> Experience:
        flat = [ex for rep in job["replicas"] for ex in rep]
        exp = assemble_experience(flat, job["samples"], with_offline=self.with_offline, policy_version=job["version"])
        return score_experience(exp, score=self.scorer.score,
                                decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True))

    # --- weights --------------------------------------------------------------------------------------
    def refit(self, stream, version: int, step: int) -> dict:
        """Collective (every rank walks ``stream``): queue version ``version`` for the engines after the
        generations already queued. At k = 0 nothing is queued (the synchronous loop): rank 0 broadcasts each
        bucket as soon as it is gathered, holding no copy of the model; at k >= 1 the engines are generating,
        so rank 0 stages the weights and the driver broadcasts them when the queued generations are done."""
        if self.k == 0:
            return self._refit_streamed(stream, version, step)
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
        self._queue_refit(staged, version, step)
        return {"refit/gather_seconds": t1 - t0, "refit/buckets": len(self.pool.layout),
                "refit/gbytes": sum(t.numel() * t.element_size() for t in staged.values()) / 1e9}

    def _refit_streamed(self, stream, version: int, step: int) -> dict:
        if self.g.rank != 0:
            for _ in stream:
                pass
            return {}
        if self._failed is not None:
            raise self._failed
        t0 = time.perf_counter()
        try:
            stats = self.pool.refit(((n, t) for n, t in stream if n not in self.plan.ignored), version)
        except BaseException as exc:
            self._failed = exc
            raise
        t1 = time.perf_counter()
        self.version = version
        self.timeline.add("trainer", "refit gather", t0, t1, step)  # gathered and broadcast bucket by bucket
        for e, sec in enumerate(stats["engine_seconds"]):
            self.timeline.add(f"engine {e}", "refit", t1 - sec, t1, step)
        return {"refit/gather_seconds": t1 - t0, "refit/buckets": stats["buckets"], "refit/gbytes": stats["bytes"] / 1e9}

    def _queue_refit(self, staged: dict, version: int, step: int) -> None:
        """Rank 0: the broadcast runs on the driver after the generations queued before it."""
        self._driver.submit(self._guarded, self._refit_job, staged, version, step)

    def _refit_job(self, staged: dict, version: int, step: int) -> dict:
        t0 = time.perf_counter()
        stats = self.pool.refit(staged, version)
        t1 = time.perf_counter()
        for e, sec in enumerate(stats["engine_seconds"]):
            self.timeline.add(f"engine {e}", "refit", t1 - sec, t1, step)
        self.timeline.add("driver", "refit broadcast", t0, t1, step)
        return stats

    def finish(self) -> None:
        """Rank 0: wait for the jobs still queued (the last refit), so that a failure there is reported."""
        if self.g.rank == 0 and self._driver is not None:
            self._driver.submit(self._guarded, lambda: None).result()

    def step_metrics(self, since: float) -> dict:
        """The last take's staleness and wait; busy seconds per process and stage since ``since`` (rank 0),
        and each engine's idle share."""
        info, self._info = self._info or {}, {}
        if self.g.rank != 0:
            return dict(info)
        now = time.perf_counter() - self.timeline.t_start
        busy = self.timeline.busy(since)
        m = {f"busy/{p.replace(' ', '')}/{s.replace(' ', '_')}": v for (p, s), v in busy.items()}
        for e in range(len(self.pool.engines)):
            b = sum(v for (p, _), v in busy.items() if p == f"engine {e}")
            m[f"idle/engine{e}_fraction"] = max(0.0, 1.0 - b / max(1e-9, now - since))
        return {**info, **m}

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
