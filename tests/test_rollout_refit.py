"""Bucketed refit logic against a recording fake engine (no vLLM): plan validation, bucket bounds, errors.

The same refit against the real vLLM engine is in tests/test_rollout_engine.py.
"""
import pytest
import torch

from red_megatron.rollout.config import RolloutConfig
from red_megatron.rollout.refit import RefitError, RefitPlan, refit, specs_of
from red_megatron.rollout.verify import logprob_gap


class FakeEngine:
    """Records buckets like RolloutEngine's load_weights would receive them."""

    def __init__(self):
        self.buckets, self.weights, self.events = [], {}, []

    def begin_weight_update(self):
        self.events.append("begin")

    def load_weights(self, bucket):
        bucket = list(bucket)
        self.buckets.append([(n, t.numel() * t.element_size()) for n, t in bucket])
        self.weights.update({n: t.clone() for n, t in bucket})

    def finish_weight_update(self):
        self.events.append("finish")
        return set()

    def reset_prefix_cache(self):
        self.events.append("reset")


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (64, 16), "model.layers.0.self_attn.q_proj.weight": (16, 16),
              "model.layers.0.self_attn.q_proj.bias": (16,), "model.layers.0.mlp.up_proj.weight": (40, 16),
              "model.norm.weight": (16,), "lm_head.weight": (64, 16)}
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def _expected(w):
    return {n: (tuple(t.shape), t.dtype) for n, t in w.items()}


@pytest.mark.parametrize("bucket_bytes", [0, 1, 3000, 5000, 10**9])
def test_buckets_bounded_and_complete(bucket_bytes):
    w = _weights()
    plan = RefitPlan.build(specs_of(w.items()), _expected(w), dtype=torch.float32, bucket_bytes=bucket_bytes)
    eng = FakeEngine()
    stats = refit(eng, plan, iter(w.items()))
    assert eng.events == ["begin", "finish", "reset"]  # prefix cache reset after the update, once
    largest = max(t.numel() * 4 for t in w.values())
    sizes = [sum(b for _, b in bucket) for bucket in eng.buckets]
    # memory held beyond the model: one bucket, which only exceeds bucket_bytes by being a single tensor
    assert all(s <= max(bucket_bytes, largest) for s in sizes)
    assert all(s <= bucket_bytes or len(bucket) == 1 for s, bucket in zip(sizes, eng.buckets))
    # maximal buckets: a bucket plus the next tensor would have overflowed
    for bucket, nxt in zip(eng.buckets, eng.buckets[1:]):
        assert sum(b for _, b in bucket) + nxt[0][1] > bucket_bytes
    assert [n for b in eng.buckets for n, _ in b] == list(w)  # stream order kept
    for n, t in w.items():
        assert torch.equal(eng.weights[n], t)
    assert stats.tensors == len(w) and stats.buckets == len(eng.buckets) and stats.bytes == plan.total_bytes
    if bucket_bytes == 0:
        assert stats.buckets == len(w)
    if bucket_bytes == 10**9:
        assert stats.buckets == 1


def test_cast_to_engine_dtype():
    w = _weights()
    plan = RefitPlan.build(specs_of(w.items()), _expected(w), dtype=torch.bfloat16, bucket_bytes=1 << 20)
    eng = FakeEngine()
    stats = refit(eng, plan, iter(w.items()))
    assert all(t.dtype == torch.bfloat16 for t in eng.weights.values())
    assert stats.bytes == sum(t.numel() * 2 for t in w.values())


def test_plan_names_missing_added_and_misshaped_tensors():
    w = _weights()
    specs = specs_of(w.items())
    with pytest.raises(RefitError, match="misses .*model.norm.weight"):
        RefitPlan.build([s for s in specs if s[0] != "model.norm.weight"], _expected(w), dtype=torch.float32,
                        bucket_bytes=0)
    with pytest.raises(RefitError, match="add tensor 'model.layers.0.extra.weight'"):
        RefitPlan.build(specs + [("model.layers.0.extra.weight", (3,), torch.float32)], _expected(w),
                        dtype=torch.float32, bucket_bytes=0)
    bad = [(n, (72, 16) if n == "lm_head.weight" else s, d) for n, s, d in specs]  # a padded vocabulary
    with pytest.raises(RefitError, match=r"'lm_head.weight' has shape \(72, 16\).*expects \(64, 16\)"):
        RefitPlan.build(bad, _expected(w), dtype=torch.float32, bucket_bytes=0)
    with pytest.raises(RefitError, match="twice"):
        RefitPlan.build(specs + specs[:1], _expected(w), dtype=torch.float32, bucket_bytes=0)
    with pytest.raises(ValueError, match="bucket_bytes"):
        RefitPlan.build(specs, _expected(w), dtype=torch.float32, bucket_bytes=-1)


def test_tied_lm_head_and_rotary_are_dropped():
    w = _weights()
    expected = {n: v for n, v in _expected(w).items() if n != "lm_head.weight"}
    specs = specs_of(w.items()) + [("model.layers.0.self_attn.rotary_emb.inv_freq", (8,), torch.float32)]
    with pytest.raises(RefitError, match="lm_head"):  # without tying, lm_head is an added tensor
        RefitPlan.build(specs, expected, dtype=torch.float32, bucket_bytes=0)
    plan = RefitPlan.build(specs, expected, dtype=torch.float32, bucket_bytes=0, tie_word_embeddings=True)
    eng = FakeEngine()
    refit(eng, plan, iter(list(w.items()) + [("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8))]))
    assert set(eng.weights) == set(expected)


def test_stream_errors_name_the_tensor():
    w = _weights()
    plan = RefitPlan.build(specs_of(w.items()), _expected(w), dtype=torch.float32, bucket_bytes=1 << 20)
    items = list(w.items())
    with pytest.raises(RefitError, match="without 1 tensor.*model.norm.weight"):
        refit(FakeEngine(), plan, iter([kv for kv in items if kv[0] != "model.norm.weight"]))
    with pytest.raises(RefitError, match="'model.bogus'"):
        refit(FakeEngine(), plan, iter(items + [("model.bogus", torch.ones(2))]))
    with pytest.raises(RefitError, match="'lm_head.weight' arrived with shape"):
        refit(FakeEngine(), plan, iter(items[:-1] + [("lm_head.weight", torch.ones(65, 16))]))
    with pytest.raises(RefitError, match="twice"):
        refit(FakeEngine(), plan, iter(items + items[:1]))
    eng = FakeEngine()
    with pytest.raises(RefitError):
        refit(eng, plan, iter(items[:2]))
    assert eng.events[-1] == "finish" and "reset" not in eng.events  # update closed, cache not declared fresh


def test_logprob_gap():
    mx, mean = logprob_gap([[-1.0, -2.0], [-0.5]], [torch.tensor([-1.0, -2.5]), [-0.25]])
    assert mx == pytest.approx(0.5) and mean == pytest.approx(0.25)
    with pytest.raises(ValueError, match="sequence 1"):
        logprob_gap([[-1.0], [-1.0, -2.0]], [[-1.0], [-1.0]])


@pytest.mark.parametrize("kwargs,field", [
    (dict(tp_infer=0), "tp_infer"), (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization"),
    (dict(dtype="fp8"), "dtype"), (dict(max_model_len=4), "max_model_len"),
    (dict(tp_infer=2), "external_launcher"), (dict(executor="ray"), "executor"),
])
def test_rollout_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        RolloutConfig(**kwargs)


@pytest.mark.slow
def test_refit_gpu_bench_smoke(tmp_path):
    """benchmarks/refit_gpu_bench.py on the CPU at a tiny shape: the real Megatron stream and refit into
    an emulated vLLM layout (fused qkv_proj / gate_up_proj) land every element exactly, and the bucket
    counts follow the bucket size. Its own process: it initialises a one-rank model-parallel state."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(repo / "benchmarks" / "refit_gpu_bench.py"), "--shape", "smoke", "--repeats", "1",
           "--buckets", "0,whole", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "refit_gpu_bench.json").read_text())
    assert res["check"]["exact"], res["check"]
    assert res["check"]["tensors_checked"] == res["meta"]["tensors"]  # tied: no lm_head in the stream
    one_each, whole = res["runs"]
    assert one_each["buckets"] == res["meta"]["tensors"]
    assert whole["buckets"] == 1 and whole["max_bucket_MiB"] * 2 ** 20 == res["meta"]["model_bytes"]
    assert all(run["seconds"] > 0 and run["GBps"] > 0 for run in res["runs"])
