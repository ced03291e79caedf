"""Bucketed refit: the trainer's HF-named weights stream into the engine after every optimiser step.

The plan is built once, from the trainer side's ordered ``(hf_name, shape, dtype)`` specs (Megatron:
``red_megatron.policy.convert.hf_weight_specs``) and the tensors the engine's checkpoint holds.
It is where a layout mismatch is caught, before any weight moves: a tensor the engine does not
have ("adds"), one the trainer does not send ("misses"), or a shape that differs, each named.

Each step, ``refit`` pulls ``(hf_name, full_tensor)`` from a generator (Megatron's
``stream_hf_weights`` gathers TP shards and hands pipeline stages' tensors over, one tensor at a
time, on every rank) and passes them to ``engine.load_weights`` in the plan's buckets
(:attr:`RefitPlan.buckets`, the one cut every refit path uses): a bucket closes *before* a tensor
that would overflow ``bucket_bytes``, so the memory held beyond the model is at most one bucket plus
the one tensor the generator is producing; 0 bytes means one tensor a bucket. The prefix cache is reset at the end: cached KV of the old weights must not be reused.

``RefitPlan.for_engine`` also decides, once, whether the engine can take the fast path (tensors
copied straight into its parameters, rollout/fast_refit.py) or needs vLLM's layerwise reload; the
reason for the reload is logged once, and ``RefitStats.fast`` says which path a refit took.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

# Tensors an HF stream may carry that vLLM never loads: rotary caches.
_ALWAYS_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


_LOGGED_REASONS: set[str] = set()  # each reason for the slow path is logged once a process


class RefitError(ValueError):
    """The trainer's weights and the engine's do not line up; the message names the tensors."""


@dataclass(frozen=True)
class RefitStats:
    tensors: int
    buckets: int
    bytes: int
    seconds: float
    max_bucket_bytes: int
    fast: bool = False  # the fast path (in-place copies) ran, not vLLM's layerwise reload


@dataclass
class RefitPlan:
    """What a refit sends and in what dtype; built once, validated against the engine's tensors."""

    names: list[str]  # in stream order
    shapes: dict[str, tuple[int, ...]]
    dtype: torch.dtype  # the engine's dtype; tensors are cast to it as they arrive
    bucket_bytes: int
    ignored: frozenset[str] = field(default_factory=frozenset)  # sent by the trainer, dropped here
    fast_key: str | None = None  # the engine's fast-update plan (None: vLLM's layerwise reload)
    fast_reason: str = "planned without an engine (RefitPlan.build)"  # why not fast, when fast_key is None

    @property
    def fast(self) -> bool:
        return self.fast_key is not None

    @classmethod
    def build(cls, specs: Sequence[tuple[str, Sequence[int], torch.dtype]],
              expected: Mapping[str, tuple[Sequence[int], object]], *, dtype: torch.dtype, bucket_bytes: int,
              tie_word_embeddings: bool = False) -> "RefitPlan":
        """``specs``: the trainer's ordered (hf_name, shape, dtype); ``expected``: the engine's name -> (shape, _).

        With tied embeddings an ``lm_head.weight`` in the stream is dropped (vLLM ties it to the embedding).
        """
        if bucket_bytes < 0:
            raise ValueError(f"RefitPlan.bucket_bytes must be >= 0 (0 = one tensor a bucket), got {bucket_bytes}")
        names, shapes, ignored, seen = [], {}, set(), set()
        for name, shape, _ in specs:
            if name in seen:
                raise RefitError(f"refit: tensor {name!r} appears twice in the trainer's weight specs")
            seen.add(name)
            if _ALWAYS_IGNORED.search(name) or (tie_word_embeddings and name == "lm_head.weight"
                                                 and name not in expected):
                ignored.add(name)
                continue
            if name not in expected:
                raise RefitError(f"refit would add tensor {name!r} (shape {tuple(shape)}), which the engine's "
                                 f"checkpoint does not have")
            want = tuple(expected[name][0])
            if tuple(shape) != want:
                raise RefitError(f"refit: tensor {name!r} has shape {tuple(shape)} on the trainer side, the engine "
                                 f"expects {want} (padded vocabulary not stripped? wrong TP gather?)")
            names.append(name)
            shapes[name] = want
        missing = [n for n in expected if n not in seen]
        if missing:
            raise RefitError(f"refit misses {len(missing)} tensor(s) the engine has, e.g. {missing[:5]}")
        return cls(names=names, shapes=shapes, dtype=dtype, bucket_bytes=int(bucket_bytes),
                   ignored=frozenset(ignored))

    @classmethod
    def for_engine(cls, engine, specs, *, bucket_bytes: int) -> "RefitPlan":
        """Plan against a :class:`~red_megatron.rollout.engine.RolloutEngine`'s checkpoint tensors, and
        decide once whether its refits take the fast path."""
        plan = cls.build(specs, engine.expected_weights, dtype=engine.dtype, bucket_bytes=bucket_bytes,
                         tie_word_embeddings=bool(engine.hf_config.get("tie_word_embeddings", False)))
        return plan.with_engine(engine)

    def with_engine(self, engine) -> "RefitPlan":
        """This plan with the fast-path decision for ``engine`` (a RolloutEngine), made once: a
        disaggregated engine binds the plan it receives from the trainer."""
        key, reason = engine.prepare_fast_update({n: self.shapes[n] for n in self.names})
        if reason is not None and reason not in _LOGGED_REASONS:
            _LOGGED_REASONS.add(reason)
            log.info("refit: vLLM's layerwise reload, not the fast path: %s", reason)
        return dataclasses.replace(self, fast_key=key, fast_reason=reason or "")

    @property
    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self.names)

    def nbytes(self, name: str) -> int:
        return torch.empty((), dtype=self.dtype).element_size() * _numel(self.shapes[name])

    @property
    def buckets(self) -> list[list[str]]:
        """The refit's buckets, in stream order: the one cut every refit uses (in-process engines, and
        both ends of the disaggregated weight broadcast). A bucket closes before a tensor that would
        overflow ``bucket_bytes``; 0 bytes: one tensor a bucket."""
        out, cur, cur_bytes = [], [], 0
        for name in self.names:
            n = self.nbytes(name)
            if cur and cur_bytes + n > self.bucket_bytes:
                out.append(cur)
                cur, cur_bytes = [], 0
            cur.append(name)
            cur_bytes += n
        return out + ([cur] if cur else [])


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def specs_of(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of named tensors, e.g. an HF model's ``state_dict().items()``."""
    return [(n, tuple(t.shape), t.dtype) for n, t in named_tensors]


def refit(engine, plan: RefitPlan, stream: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
    """Stream ``(hf_name, tensor)`` pairs into the engine in buckets; then reset its prefix cache.

    ``engine`` needs ``begin_weight_update`` (with ``fast=plan.fast_key`` when the plan is fast),
    ``load_weights``, ``finish_weight_update`` (returns the engine-side parameters that received
    nothing) and ``reset_prefix_cache``. Every name must be in
    the plan, once; a missing one is reported after the stream ends (the engine then holds a mix
    of old and new weights: refit again before generating).
    """
    t0 = time.perf_counter()
    wanted = set(plan.names)
    bucket_of = {n: i for i, names in enumerate(plan.buckets) for n in names}
    pending: dict[int, list[tuple[str, torch.Tensor]]] = {}  # plan bucket -> its tensors arrived so far
    done: set[str] = set()
    n_buckets = total = max_bucket = 0

    def load(i: int) -> None:
        nonlocal n_buckets, max_bucket
        part = pending.pop(i)
        engine.load_weights(part)
        n_buckets += 1
        max_bucket = max(max_bucket, sum(t.numel() * t.element_size() for _, t in part))

    if plan.fast:
        engine.begin_weight_update(fast=plan.fast_key)
    else:
        engine.begin_weight_update()
    try:
        for name, t in stream:
            if name in plan.ignored:
                continue
            if name not in wanted:
                raise RefitError(f"refit: the stream sent tensor {name!r}, which is not in the refit plan "
                                 f"(the engine has no such tensor)")
            if name in done:
                raise RefitError(f"refit: the stream sent tensor {name!r} twice")
            if tuple(t.shape) != plan.shapes[name]:
                raise RefitError(f"refit: tensor {name!r} arrived with shape {tuple(t.shape)}, the plan expects "
                                 f"{plan.shapes[name]}")
            t = t.detach().to(plan.dtype).contiguous()
            i = bucket_of[name]
            pending.setdefault(i, []).append((name, t))
            total += t.numel() * t.element_size()
            done.add(name)
            del t
            if len(pending[i]) == len(plan.buckets[i]):  # the bucket is complete: load it
                load(i)
        for i in sorted(pending):  # buckets a missing tensor left open: load what arrived, report below
            load(i)
    finally:
        pending.clear()
        not_loaded = engine.finish_weight_update()
    missing = [n for n in plan.names if n not in done]
    if missing:
        raise RefitError(f"refit: the stream ended without {len(missing)} tensor(s), e.g. {missing[:5]}; the "
                         f"engine now holds a mix of old and new weights")
    if not_loaded:
        raise RefitError(f"refit: engine parameters received no weights: {sorted(not_loaded)[:5]}")
    engine.reset_prefix_cache()
    stats = RefitStats(tensors=len(done), buckets=n_buckets, bytes=total, seconds=time.perf_counter() - t0,
                       max_bucket_bytes=max_bucket, fast=plan.fast)
    log.debug("refit: %s", stats)
    return stats
