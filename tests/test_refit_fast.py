"""Refit fast path (rollout/fast_refit.py) against vLLM's layerwise reload on the same engine.

The two paths must leave the engine in the same state, bit for bit: the same parameters and the
same greedy and seeded-sampled generations with their log-probs. Each comparison also checks that
the weights moved (the original weights give other outputs), so a fast path that copied nothing
would fail. float32 engines over three tiny checkpoints (the session's Qwen2, a Qwen3 with tied
embeddings, a Llama); every test runs on each, one engine at a time (closing a vLLM engine tears
down vLLM's global parallel state, so two engines never overlap).
"""
import dataclasses

import pytest
import torch

pytestmark = pytest.mark.vllm

PROMPTS = [[1, 50, 60, 70, 80], [1, 300, 12, 9], [1, 5, 6, 7, 8, 9, 10, 11, 12]]


def _engine(model_dir, **kw):
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    return RolloutEngine(model_dir, RolloutConfig(dtype="float32", max_model_len=256, seed=0, max_num_seqs=16, **kw))


CHECKPOINTS = {  # None: the session's tiny Qwen2 (conftest.tiny_ckpt_dir)
    "qwen2": None,
    "qwen3_tied": dict(arch="qwen3", tie_word_embeddings=True, seed=3),
    "llama": dict(arch="llama", seed=3),
}


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def model_dir(request, tiny_ckpt_dir, tmp_path_factory):
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    if CHECKPOINTS[request.param] is None:
        return tiny_ckpt_dir
    return make_tiny_checkpoint(TinyCheckpointConfig(**CHECKPOINTS[request.param]),
                                tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def engine(model_dir):
    eng = _engine(model_dir)
    yield eng
    eng.close()


def _checkpoint(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _perturbed(sd, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: t + scale * torch.randn(t.shape, generator=g) for n, t in sd.items()}


def _outputs(engine):
    """Greedy and seeded-sampled continuations with log-probs, and prompt log-probs: all exact floats."""
    greedy = engine.generate(PROMPTS, n=1, temperature=0.0, max_tokens=12)
    sampled = engine.generate(PROMPTS, n=3, temperature=0.9, max_tokens=12, seed=7)
    out = [[(s.token_ids, s.logprobs, s.finish_reason) for s in per] for per in greedy + sampled]
    return out, engine.score([p + s[0].token_ids for p, s in zip(PROMPTS, greedy)])


def _plans(engine, weights, bucket_bytes=100 << 10):
    from red_megatron.rollout.refit import RefitPlan, specs_of

    specs = specs_of(weights.items())
    fast = RefitPlan.for_engine(engine, specs, bucket_bytes=bucket_bytes)
    slow = RefitPlan.build(specs, engine.expected_weights, dtype=engine.dtype, bucket_bytes=bucket_bytes,
                           tie_word_embeddings=bool(engine.hf_config.get("tie_word_embeddings", False)))
    assert fast.fast and fast.fast_reason == "", fast.fast_reason
    assert not slow.fast
    return fast, slow


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _fast_equals_layerwise(engine, original):
    """Refit the same perturbed weights both ways (from the original state each time); compare."""
    from red_megatron.rollout.refit import refit

    new = _perturbed(original)
    fast, slow = _plans(engine, new)
    back_fast, back_slow = _plans(engine, original)
    before = _outputs(engine)
    assert refit(engine, slow, iter(new.items())).fast is False
    by_reload, state_reload = _outputs(engine), engine.state_dict()
    assert by_reload != before, "the perturbed weights must change the outputs (else nothing is compared)"
    refit(engine, back_slow, iter(original.items()))
    assert _outputs(engine) == before
    stats = refit(engine, fast, iter(new.items()))
    assert stats.fast is True and stats.tensors == len(new) and stats.buckets > 1
    assert _outputs(engine) == by_reload
    _assert_same_state(engine.state_dict(), state_reload)
    # the engine holds its own copy: the trainer may reuse its tensors once refit() returns
    for t in new.values():
        t.mul_(-3.0)
    assert _outputs(engine) == by_reload
    # and back by the fast path: the original outputs, exactly
    refit(engine, back_fast, iter(original.items()))
    assert _outputs(engine) == before


def test_fast_refit_bit_identical_to_layerwise_reload(engine, model_dir):
    _fast_equals_layerwise(engine, _checkpoint(model_dir))


def test_tied_lm_head_is_reprocessed_with_the_embedding(engine, model_dir):
    """Tied: lm_head shares the embedding's Parameter but holds its own packed copy on the CPU, so
    the embedding's completion must re-process it too (else greedy decoding keeps the old LM head:
    the bit-identity test above would fail on the tied checkpoint)."""
    from red_megatron.rollout.refit import RefitPlan, specs_of

    original = _checkpoint(model_dir)
    tied = bool(engine.hf_config.get("tie_word_embeddings", False))
    assert ("lm_head.weight" in original) is not tied
    key = RefitPlan.for_engine(engine, specs_of(original.items()), bucket_bytes=0).fast_key
    groups = engine.llm.collective_rpc(lambda w: w._red_fast_plans[key].reprocess)[0]
    assert groups["model.embed_tokens"] == (["model.embed_tokens", "lm_head"] if tied else ["model.embed_tokens"])
    assert ("lm_head" in groups) is not tied


def test_flag_off_forces_layerwise_reload(engine, model_dir):
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    original = _checkpoint(model_dir)
    cfg = engine.cfg
    engine.cfg = dataclasses.replace(cfg, refit_fast_path=False)  # read when a plan is made
    try:
        plan = RefitPlan.for_engine(engine, specs_of(original.items()), bucket_bytes=1 << 20)
    finally:
        engine.cfg = cfg
    assert not plan.fast and "refit_fast_path" in plan.fast_reason
    assert refit(engine, plan, iter(original.items())).fast is False
    assert refit(engine, RefitPlan.for_engine(engine, specs_of(original.items()), bucket_bytes=1 << 20),
                 iter(original.items())).fast is True
    assert RolloutConfig().refit_fast_path is True
    with pytest.raises(ValueError, match="refit_fast_path"):
        RolloutConfig(refit_fast_path="yes")


def _reason(engine, shapes, dtype=torch.float32, tp_size=1):
    from red_megatron.rollout.fast_refit import plan_fast_update

    def on_worker(worker):
        return plan_fast_update(worker.model_runner.get_model(), shapes, dtype, tp_size=tp_size)[1]

    return engine.llm.collective_rpc(on_worker)[0]


def test_resolver_reports_why_not_eligible(engine, model_dir):
    from red_megatron.rollout.refit import RefitError, RefitPlan, specs_of

    original = _checkpoint(model_dir)
    shapes = {n: tuple(t.shape) for n, t in original.items()}
    assert _reason(engine, shapes) is None
    assert "tp_infer=2" in _reason(engine, shapes, tp_size=2)
    assert "bfloat16" in _reason(engine, shapes, dtype=torch.bfloat16)
    bogus = {**shapes, "model.layers.0.self_attn.bogus.weight": (4, 128)}
    assert "'model.layers.0.self_attn.bogus.weight'" in _reason(engine, bogus)
    wrong = {**shapes, "model.layers.0.self_attn.k_proj.weight": (32, 128)}  # a slot of the wrong size
    assert "k_proj.weight" in _reason(engine, wrong) and "(32, 128)" in _reason(engine, wrong)
    no_v = {n: s for n, s in shapes.items() if n != "model.layers.1.self_attn.v_proj.weight"}
    assert "qkv_proj.weight" in _reason(engine, no_v) and "unwritten" in _reason(engine, no_v)
    # a name the engine's checkpoint lacks is still caught by the plan itself, before any fast decision
    with pytest.raises(RefitError, match="add tensor 'model.layers.0.self_attn.bogus.weight'"):
        RefitPlan.for_engine(engine, specs_of(original.items()) + [("model.layers.0.self_attn.bogus.weight",
                                                                      (4, 128), torch.float32)], bucket_bytes=0)


def test_fast_refit_reports_a_short_stream(engine, model_dir):
    """The stream ends early: the same RefitError as the reload path; a full refit then restores."""
    from red_megatron.rollout.refit import RefitError, RefitPlan, refit, specs_of

    original = _checkpoint(model_dir)
    before = _outputs(engine)
    new = _perturbed(original, seed=4)
    plan = RefitPlan.for_engine(engine, specs_of(new.items()), bucket_bytes=1 << 20)
    assert plan.fast
    short = [kv for kv in new.items() if kv[0] != "model.layers.0.mlp.up_proj.weight"]
    with pytest.raises(RefitError, match="without 1 tensor.*up_proj"):
        refit(engine, plan, iter(short))
    loaded = engine.llm.collective_rpc(lambda w: w._red_fast_plans[plan.fast_key].loaded)[0]
    assert "model.layers.0.mlp.gate_up_proj.weight" not in loaded  # gate arrived, up did not: not complete
    assert "model.layers.0.mlp.down_proj.weight" in loaded
    assert engine._updating is False
    refit(engine, RefitPlan.for_engine(engine, specs_of(original.items()), bucket_bytes=0), iter(original.items()))
    assert _outputs(engine) == before
