"""benchmarks/projection.py: parameter counts, the fit recovers known constants, leave-one-out is
honest (the held-out shape is not in the fit), and the parallelism terms behave as stated."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("projection", Path(__file__).resolve().parents[1] / "benchmarks" / "projection.py")
P = importlib.util.module_from_spec(_spec)
sys.modules["projection"] = P  # dataclasses look their module up while the file executes
_spec.loader.exec_module(P)


@pytest.mark.parametrize("name, billions", [("0.5B", 0.49), ("1.5B", 1.54), ("3B", 3.09), ("7B", 7.61), ("32B", 32.5)])
def test_parameter_counts_match_the_published_sizes(name, billions):
    assert P.SHAPES[name].params / 1e9 == pytest.approx(billions, rel=0.02)


def _synthetic(c, noise=0.0, seed=0):
    rng = random.Random(seed)
    ms = []
    for name in ("0.5B", "1.5B", "3B", "7B"):
        s = P.SHAPES[name]
        for tokens in (4096, 8192):
            t = P.fwd_bwd_seconds(s, tokens, tokens, c) * (1 + noise * rng.uniform(-1, 1))
            mem = P.peak_memory_bytes(s, tokens, c, optimizer=False)
            ms.append(P.Measurement(shape=s, tokens=tokens, seq=tokens, seconds=t, peak_bytes=mem, optimizer=False))
    return ms


def test_fit_recovers_constants_and_loo_error_is_small_on_exact_data():
    true = P.Constants(r_mm=420e12, c_step=0.03, act=40.0, c0=3 * P.GiB)
    c = P.fit(_synthetic(true))
    assert c.r_mm == pytest.approx(true.r_mm, rel=1e-6) and c.c_step == pytest.approx(true.c_step, rel=1e-5)
    assert c.act == pytest.approx(true.act, rel=1e-6) and c.c0 == pytest.approx(true.c0, rel=1e-5)
    loo = P.leave_one_out(_synthetic(true))
    assert len(loo) == 8 and max(abs(r["time_err"]) for r in loo) < 1e-6


def test_loo_holds_the_shape_out():
    true = P.Constants(r_mm=420e12, c_step=0.01)
    ms = _synthetic(true)
    ms_bad = [dataclasses.replace(m, seconds=m.seconds * 2) if m.shape.name == "7B" else m for m in ms]
    loo = {(r["shape"], r["tokens"]): r for r in P.leave_one_out(ms_bad)}
    # the doubled shape is predicted from the others: ~ -50 % error, not fitted away
    assert loo[("7B", 4096)]["time_err"] == pytest.approx(-0.5, abs=0.03)


def test_calibration_on_the_h100_measurements():
    # every measured configuration is predicted within a few percent when held out of the fit
    loo = P.leave_one_out(P.hf_measurements(), P.Constants(r_mm=4e14, r_head=P.fit_head(), gamma=P.fit_loss()[0]))
    assert len(loo) == 3 and max(abs(r["time_err"]) for r in loo) < 0.05 and max(abs(r["mem_err"]) for r in loo) < 0.05
    terms = P.loo_head_and_loss()
    assert len(terms) == 8 and max(abs(r["time_err"]) for r in terms) < 0.10
    c = P.calibrated_constants()
    assert 0.2 < c.r_mm / P.Hardware().peak_bf16 < 0.8 and c.r_head > c.r_mm  # the big GEMM runs faster


def test_parallel_terms():
    c, w, s = P.Constants(r_mm=400e12, beta=2e-12), P.Workload(), P.SHAPES["32B"]
    a = P.project(s, P.Layout(nodes=2, tp=8, pp=2, tp_infer=4), w, c)
    b = P.project(s, P.Layout(nodes=4, tp=8, pp=2, tp_infer=4), w, c)
    assert a["bubble"] == pytest.approx((2 - 1) / (a["microbatches"] + 2 - 1))
    assert b["dp"] == 2 * a["dp"] and b["mem_train_gib"] < a["mem_train_gib"]  # optimizer state sharded wider
    assert b["train_s"] == pytest.approx(a["train_s"] / 2, rel=0.1)  # DP halves the per-rank tokens
    one = P.project(P.SHAPES["7B"], P.Layout(nodes=1, tp=1, pp=1, tp_infer=1), w, c)
    assert one["tp_comm_s"] == 0 and one["bubble"] == 0
    with pytest.raises(ValueError):
        P.project(s, P.Layout(nodes=1, tp=8, pp=3, tp_infer=4), w, c)
    assert not P.project(s, P.Layout(nodes=1, tp=8, pp=1, tp_infer=4), w, c)["fits"]  # 32B on one node


def test_measurement_loader(tmp_path):
    import json

    f = tmp_path / "p.json"
    f.write_text(json.dumps({"meta": {}, "runs": [
        {"impl": "mcore_sdpa_red", "shape": "1.5b", "batch": 1, "seq": 4096, "tokens": 4096, "ms": 200.0,
         "peak_gib": 30.0},
        {"impl": "mcore_sdpa_red", "shape": "7b", "batch": 1, "seq": 4096, "tokens": 4096, "error": "OOM: ..."},
        {"impl": "hf_sdpa", "shape": "3b", "batch": 1, "seq": 4096, "tokens": 4096, "ms": 400.0},
        {"impl": "mcore_sdpa_red", "shape": "3b", "batch": 2, "seq": 4096, "tokens": 8192, "ms": 500.0}]}))
    ms = P.load_policy_measurements(f)
    assert [(m.shape.name, m.tokens, m.seq) for m in ms] == [("1.5B", 4096, 4096), ("3B", 8192, 4096)]
    assert ms[0].peak_bytes == 30.0 * P.GiB and ms[1].peak_bytes is None and math.isclose(ms[1].seconds, 0.5)
    assert len(P.load_policy_measurements(f, impl=None)) == 3


def test_long_projection_fused_head_column():
    """projection_long's fused-head column: the op's own buffers instead of every logit, one more LM-head
    GEMM in the time; it pays off where the rank holds many rows of a wide shard."""
    spec = importlib.util.spec_from_file_location("projection_long", Path(P.__file__).with_name("projection_long.py"))
    L = importlib.util.module_from_spec(spec)
    sys.modules["projection_long"] = L
    spec.loader.exec_module(L)
    from kernels.lm_head_loss import extra_bytes

    s, c, hw = P.SHAPES["1.5B"], P.Constants(r_mm=400e12), P.Hardware()
    tp1 = L.LongLayout(name="tp1", tp=1)
    assert L.logits_bytes(s, tp1, 16384, c) == 2.0 * 16384 * s.vocab
    assert L.logits_bytes(s, tp1, 16384, c, fused_head=True) == extra_bytes(16384, s.hidden, s.vocab)
    assert L.longest(s, tp1, c, hw, 0.2, fused_head=True) > L.longest(s, tp1, c, hw, 0.2)
    extra = L.seconds(s, tp1, 16384, c, hw, fused_head=True) - L.seconds(s, tp1, 16384, c, hw)
    assert extra == pytest.approx(16384 * 2 * s.hidden * s.vocab / c.r_head)
    few_rows = L.LongLayout(name="tp8 cp2", tp=8, cp=2, gpus=32)  # 1,024 rows a rank: all in one tile
    assert L.logits_bytes(s, few_rows, 2048, c, fused_head=True) >= L.logits_bytes(s, few_rows, 2048, c)


def _projection_moe():
    spec = importlib.util.spec_from_file_location("projection_moe", Path(P.__file__).with_name("projection_moe.py"))
    M = importlib.util.module_from_spec(spec)
    sys.modules["projection_moe"] = M
    spec.loader.exec_module(M)
    return M


def test_moe_projection_counts_fit_and_layout_terms(tmp_path):
    """projection_moe: Qwen3-30B-A3B's total and active parameters are red_megatron.hf's; R_moe is recovered
    from a bench JSON (and from gpu_pending's summary.json) made with a known rate; EP shrinks the memory and
    adds all-to-all time, over InfiniBand once the EP group leaves the node; bad layouts are refused."""
    import json

    from red_megatron.hf.config import read_hf_config
    from tests.hf_shapes import QWEN3_30B_A3B

    M = _projection_moe()
    s, hf = M.QWEN3_30B_A3B, read_hf_config(QWEN3_30B_A3B)
    assert (s.params, s.active_params) == (hf.num_params(), hf.num_active_params())
    c = P.Constants(r_mm=400e12, c_step=2e-3)
    layers, r_moe = 2, 150e12
    small = dataclasses.replace(s, layers=layers, vocab=1024)
    runs = [{"impl": "hf", "seq": 4096, "tokens": 4096, "ms": 1.0}]  # not the trainer's path: ignored
    for tokens, seq in ((4096, 4096), (8192, 4096)):
        sec = c.c_step + tokens * (layers * M.layer_seconds_per_token(small, seq, c, r_moe)
                                   + 6.0 * small.hidden * small.vocab / c.r_head)
        runs.append({"impl": "mcore", "seq": seq, "tokens": tokens, "ms": 1e3 * sec, "model_gib": 2.5,
                     "peak_gib": 5.0 + 40.0 * tokens * small.hidden * layers / P.GiB})
    cfg = {"num_hidden_layers": layers, "vocab_size": 1024, "hidden_size": 2048, "num_attention_heads": 32,
           "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
           "moe_intermediate_size": 768}
    bench = tmp_path / "moe.json"
    bench.write_text(json.dumps({"config": cfg, "runs": runs}))
    got = M.fit_moe(bench, c)
    assert got["r_moe"] == pytest.approx(r_moe, rel=1e-9) and got["act"] == pytest.approx(40.0) and got["rows"] == 2
    summary = tmp_path / "summary.json"
    moe_part = {"part": "moe", "data": {"config": cfg, "runs": runs}}
    summary.write_text(json.dumps({"parts": [{"part": "policy"}, moe_part]}))
    assert M.fit_moe(summary, c)["r_moe"] == pytest.approx(r_moe, rel=1e-9)
    bench.write_text(json.dumps({"config": cfg, "runs": runs[:1]}))
    with pytest.raises(ValueError, match="no successful megatron-core"):
        M.fit_moe(bench, c)

    w = P.Workload()
    one = M.project_moe(s, M.MoELayout(nodes=2, ep=1, pp=2, tp_infer=4), w, c, r_moe)
    eight = M.project_moe(s, M.MoELayout(nodes=2, ep=8, pp=2, tp_infer=4), w, c, r_moe)
    sixteen = M.project_moe(s, M.MoELayout(nodes=2, ep=16, pp=1, tp_infer=4), w, c, r_moe)
    assert one["a2a_s"] == 0 and eight["a2a_s"] > 0 and eight["mem_train_gib"] < one["mem_train_gib"] - 20
    assert (eight["dp"], eight["expert_dp"], sixteen["expert_dp"]) == (8, 1, 1)
    per_layer = lambda r: r["a2a_s"] / ((r["microbatches"] + r["pp"] - 1) * s.layers / r["pp"])  # noqa: E731
    assert per_layer(sixteen) > 5 * per_layer(eight)  # 40 GB/s InfiniBand vs 360 GB/s NVLink
    for bad in (M.MoELayout(nodes=1, ep=16, pp=1, tp_infer=4), M.MoELayout(nodes=2, ep=3, pp=1, tp_infer=4)):
        with pytest.raises(ValueError, match="must divide"):
            M.project_moe(s, bad, w, c, r_moe)
    out = M.table()  # the shipped table: every layout projected or refused with its reason
    assert out["r_moe_source"].startswith("ASSUMED") and len(out["rows"]) == len(M.LAYOUTS)
