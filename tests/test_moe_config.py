"""The MoE rules, stated once and applied before anything starts: the checkpoint's routing fields, the
expert-parallel layout (EP divides the experts, tp·ep·pp divides the world, EP with TP needs SP, no
alltoall dispatcher on gloo), and ``red-train --check`` on a Qwen3-30B-A3B-shaped config.json."""
from __future__ import annotations

import json

import pytest
import torch

from configs import get_recipe
from red_megatron.config import check_world
from red_megatron.hf.config import read_hf_config
from red_megatron.overrides import apply_overrides
from red_megatron.policy.config import PolicyConfig
from tests.hf_shapes import QWEN3_30B_A3B


def test_qwen3_30b_a3b_config_reads_as_48_routed_layers():
    hf = read_hf_config(QWEN3_30B_A3B)
    assert hf.family == "qwen3_moe" and hf.qk_norm and hf.is_moe and all(hf.moe_layers)
    assert (hf.num_experts, hf.moe_top_k, hf.moe_intermediate_size) == (128, 8, 768)
    # the published sizes: 30.5B parameters, 3.3B active
    assert round(hf.num_params() / 1e9, 1) == 30.5 and 3.3e9 <= hf.num_active_params() < 3.4e9


def test_mlp_only_layers_and_sparse_step_pick_dense_layers():
    cfg = {**QWEN3_30B_A3B, "num_hidden_layers": 6, "mlp_only_layers": [0], "decoder_sparse_step": 2}
    assert read_hf_config(cfg).moe_layers == (False, True, False, True, False, True)


@pytest.mark.parametrize("change,field", [({"num_experts_per_tok": 0}, "num_experts_per_tok"),
                                          ({"mlp_only_layers": [48]}, "mlp_only_layers"),
                                          ({"shared_expert_intermediate_size": 512}, "shared_expert"),
                                          ({"moe_intermediate_size": None}, "moe_intermediate_size")])
def test_bad_routing_fields_name_the_field(change, field):
    cfg = {k: v for k, v in {**QWEN3_30B_A3B, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=field):
        read_hf_config(cfg)


def test_expert_parallel_rules():
    hf = read_hf_config(QWEN3_30B_A3B)
    hf.check_ep(8)
    with pytest.raises(ValueError, match="policy.ep=3 must divide the checkpoint's num_experts=128"):
        hf.check_ep(3)
    with pytest.raises(ValueError, match="needs a mixture-of-experts checkpoint"):
        read_hf_config({**QWEN3_30B_A3B, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}).check_ep(2)
    odd = read_hf_config({**QWEN3_30B_A3B, "moe_intermediate_size": 770})  # heads allow tp 4, experts do not
    with pytest.raises(ValueError, match="policy.tp=4 must divide the checkpoint's moe_intermediate_size=770"):
        odd.check_megatron_tp(4)
    with pytest.raises(ValueError, match="rollout.tp_infer=4 must divide the checkpoint's moe_intermediate_size"):
        odd.check_vllm_tp(4)
    with pytest.raises(ValueError, match="sequence_parallel"):
        PolicyConfig(tp=2, ep=2, sequence_parallel=False)


def test_alltoall_dispatcher_is_refused_without_cuda():
    import torch

    from red_megatron.policy.moe import MoEOptions

    if torch.cuda.is_available():
        pytest.skip("the refusal is for CPU-only machines (gloo)")
    with pytest.raises(ValueError, match="alltoall"):
        MoEOptions(dispatcher="alltoall")


def _recipe(tmp_path, **over):
    ckpt = tmp_path / "Qwen3-30B-A3B"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps({**QWEN3_30B_A3B, **over}))
    return apply_overrides(get_recipe("qwen3_30b_a3b"), [f"model_dir={ckpt}", "run_dir=/runs/r"]), ckpt


def test_recipe_world_rules(tmp_path):
    cfg, _ = _recipe(tmp_path)
    check_world(cfg, 16)
    check_world(cfg, 32)
    with pytest.raises(ValueError, match=r"policy.ep=4 × policy.tp=2 × policy.pp=2 must divide the world size 8"):
        check_world(cfg, 8)
    cfg, _ = _recipe(tmp_path, num_experts=90)
    with pytest.raises(ValueError, match="policy.ep=4 must divide the checkpoint's num_experts=90"):
        check_world(cfg, 16)


def test_check_mode_validates_qwen3_30b_a3b(tmp_path, tiny_ckpt_dir, monkeypatch):
    import shutil

    from tests.test_cli import run_train

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _, ckpt = _recipe(tmp_path)
    for f in tiny_ckpt_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy2(f, ckpt / f.name)
    rc, out, err = run_train(["--recipe", "qwen3_30b_a3b", f"model_dir={ckpt}", "--check", "--world-size", "16"])
    assert rc == 0, err
    assert "Qwen3MoeForCausalLM" in out and "128 experts top-8 in 48 of 48 layers" in out and "EP 4" in out, out
    rc, out, err = run_train(["--recipe", "qwen3_30b_a3b", f"model_dir={ckpt}", "policy.ep=3", "data.global_batch_size=48", "--check",
                              "--world-size", "48"])
    assert rc == 2 and "policy.ep=3" in err and "Traceback" not in err, err


def test_step_routing_never_lets_replay_go_silently_off():
    from red_megatron.policy.routing_replay import step_routing

    r = torch.zeros(6, 3, 2, dtype=torch.int16)
    offline = torch.tensor([False, False, True])
    assert step_routing("none", [r, r, None], offline) is None
    assert step_routing("rollout", [r, r, None], offline) == [r, r, None]
    with pytest.raises(ValueError, match=r"online sample\(s\) \[1\] have no routing"):
        step_routing("rollout", [r, None, None], offline)
    with pytest.raises(ValueError, match="carries routing for 0 of 3 samples"):
        step_routing("rollout", [], offline)  # an engine without rollout.return_routing


def test_routing_travels_in_the_experience_and_the_config_refuses_replay_without_it(tmp_path):
    from red_megatron.experience import Experience, merge_experience

    r = [torch.full((5, 3, 2), i, dtype=torch.int16) for i in range(4)]
    exp = Experience(prompt_ids=[[1]] * 4, response_ids=[[2, 3]] * 4, group_id_B=torch.tensor([0, 0, 1, 1]),
                     is_offline_B=torch.zeros(4, dtype=torch.bool), rewards_B=torch.zeros(4),
                     engine_logp=[[0.0, 0.0]] * 4, finish_reasons=["stop"] * 4, num_prompts=2, routed_experts=r)
    parts = exp.split([1, 1], [0, 0])
    assert [int(x[0, 0, 0]) for x in parts[1].routed_experts] == [2, 3]
    assert all(torch.equal(a, b) for a, b in zip(merge_experience(parts).routed_experts, r))
    cfg, _ = _recipe(tmp_path)
    with pytest.raises(ValueError, match="rollout.return_routing=true"):
        apply_overrides(cfg, ["algo.routing_replay=rollout"])
    with pytest.raises(ValueError, match="enable_prefix_caching=false"):
        apply_overrides(cfg, ["algo.routing_replay=rollout", "rollout.return_routing=true"])
    ok = apply_overrides(cfg, ["algo.routing_replay=rollout", "rollout.return_routing=true",
                               "rollout.enable_prefix_caching=false"])
    check_world(ok, 16)
