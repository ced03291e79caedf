"""Recipes (configs/): the registry, the paper's hyper-parameters, and the cluster layouts checked
against the real Qwen2.5 head/layer counts and 8-GPU nodes before anything would start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs import RECIPES, get_recipe
from red_megatron.launch import LaunchSpec, check_launch
from red_megatron.overrides import apply_overrides
from tests.hf_shapes import QWEN3_30B_A3B, qwen25_config

# the public Qwen2.5 checkpoints' config.json (heads, KV heads, layers, positions)
QWEN25 = {"qwen25_math_1p5b": qwen25_config("Qwen2.5-Math-1.5B"), "qwen25_7b": qwen25_config("Qwen2.5-7B"),
          "qwen25_32b": qwen25_config("Qwen2.5-32B"), "qwen25_7b_16k": qwen25_config("Qwen2.5-7B"),
          "qwen25_32b_16k": qwen25_config("Qwen2.5-32B"), "qwen3_30b_a3b": QWEN3_30B_A3B}
# the job's paths are inside these mounts (the launcher refuses a run dir / model / data outside them)
MOUNTS = lambda tmp: (f"{tmp}:{tmp}", "/lustre/runs:/runs", "/lustre/data:/data", "/lustre/models:/models")  # noqa: E731
# the node counts each recipe is meant for (8×H100 nodes)
NODES = {"qwen25_math_1p5b": (1, 2), "qwen25_7b": (1, 2, 4, 8), "qwen25_32b": (2, 4, 8), "qwen25_7b_16k": (1, 2, 4),
         "qwen25_32b_16k": (4, 8), "qwen3_30b_a3b": (2, 4)}


def test_registry_and_unknown_name():
    assert set(RECIPES) == {"tiny_cpu", "tiny_cpu_study", "chain_cpu_base", "chain_cpu_study", "qwen25_math_1p5b", "qwen25_7b", "qwen25_32b",
                            "qwen25_7b_16k", "qwen25_32b_16k", "qwen3_30b_a3b"}
    with pytest.raises(ValueError) as e:
        get_recipe("qwen3_moe")
    assert all(name in str(e.value) for name in RECIPES)


def test_study_recipe_is_the_demo_at_a_lower_lr():
    demo, study = get_recipe("tiny_cpu"), get_recipe("tiny_cpu_study")
    assert (demo.policy.lr, study.policy.lr) == (5e-3, 1e-3)
    assert study.model_dir == demo.model_dir and study.data == demo.data and study.algo == demo.algo


def test_every_recipe_resolves_in_an_empty_directory_and_builds_nothing(tmp_path, monkeypatch):
    """Recipes only return configurations: their files are made by red_megatron.study.assets.ensure."""
    assets, cwd = tmp_path / "assets", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("RED_ASSETS", str(assets))
    monkeypatch.chdir(cwd)
    for name in RECIPES:
        cfg = get_recipe(name)
        assert cfg.name and cfg.model_dir, name
    made = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert made == ["cwd"], made
    assert get_recipe("tiny_cpu").model_dir == str(assets / "tiny_qwen2")  # it did read RED_ASSETS


def test_ensure_makes_what_a_recipe_names(tmp_path, monkeypatch):
    from red_megatron.study.assets import ensure

    monkeypatch.setenv("RED_ASSETS", str(tmp_path / "assets"))
    with pytest.raises(ValueError, match="qwen25_7b"):
        ensure("qwen25_7b")
    ensure("chain_cpu_study")
    cfg = get_recipe("chain_cpu_study")
    assert Path(cfg.data.path).is_file() and Path(cfg.eval.data_path).is_file()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "assets").rglob("*")}
    ensure("chain_cpu_study")  # a second call finds everything and rewrites nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "assets").rglob("*")} == before


def test_recipes_are_fresh_objects():
    a, b = get_recipe("qwen25_7b"), get_recipe("qwen25_7b")
    a.policy.lr = 1.0
    assert b.policy.lr == 2e-6  # a caller mutating its config does not change the recipe


@pytest.mark.parametrize("name", ["qwen25_math_1p5b", "qwen25_7b", "qwen25_32b"])
def test_paper_hyperparameters(name):
    c = get_recipe(name)
    assert c.data.global_batch_size == 64 and c.algo.num_online == 7  # 64 prompts × (7 + 1)
    assert c.algo.preset == "red" and c.algo.temperature == 1.0
    assert c.algo.eps_lo == c.algo.eps_hi == 0.2
    p = c.policy
    assert (p.lr, p.adam_beta1, p.adam_beta2, p.weight_decay, p.clip_grad) == (2e-6, 0.9, 0.95, 0.0, 1.0)
    assert p.min_lr == pytest.approx(0.1 * p.lr) and p.lr_decay_steps == c.steps
    assert c.data.max_response_tokens == 8192
    assert c.rollout.max_model_len >= c.data.max_prompt_tokens + 8192
    assert c.eval.protocol.temperature == 0.6 and c.eval.protocol.max_tokens == 8192


@pytest.mark.parametrize("name", list(NODES))
def test_cluster_layout_fits_8_gpu_nodes_and_real_head_counts(tmp_path, name):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(QWEN25[name]))
    cfg = apply_overrides(get_recipe(name), [f"model_dir={ckpt}", "run_dir=/runs/r"])
    for nodes in NODES[name]:
        spec = LaunchSpec(executor="slurm", nodes=nodes, gpus_per_node=8, account="a", container_image="i",
                          container_mounts=MOUNTS(tmp_path))
        assert check_launch(cfg, spec) == []  # config.json read: no skipped checks
    # and the checks bite: the same recipe on one GPU fewer per node is refused
    with pytest.raises(ValueError):
        check_launch(cfg, LaunchSpec(executor="slurm", nodes=NODES[name][0], gpus_per_node=7, account="a",
                                     container_image="i", container_mounts=MOUNTS(tmp_path)))


@pytest.mark.parametrize("name", ["qwen25_7b_16k", "qwen25_32b_16k"])
def test_16k_recipes_split_each_sequence_over_two_cp_ranks(name):
    c, base = get_recipe(name), get_recipe(name.removesuffix("_16k"))
    assert c.data.max_response_tokens == 16384 and c.policy.cp == 2
    assert c.rollout.max_model_len == 1024 + 16384 and c.eval.protocol.max_tokens == 16384
    # each CP rank holds half of the longest sequence: the same per-rank budget as the 8k recipe (± padding)
    assert c.policy.micro_batch_tokens == (1024 + 16384) // 2 < base.policy.micro_batch_tokens
    assert (c.policy.tp, c.policy.pp, c.algo, c.policy.lr) == (base.policy.tp, base.policy.pp, base.algo, base.policy.lr)


def test_32b_needs_two_nodes(tmp_path):
    cfg = apply_overrides(get_recipe("qwen25_32b"), ["run_dir=/runs/r"])
    with pytest.raises(ValueError, match="policy.pp=2"):
        check_launch(cfg, LaunchSpec(executor="slurm", nodes=1, gpus_per_node=8, account="a", container_image="i",
                                     container_mounts=MOUNTS(tmp_path)))


def test_tiny_cpu_assets_and_world_sizes():
    cfg = get_recipe("tiny_cpu")
    hf = json.loads((__import__("pathlib").Path(cfg.model_dir) / "config.json").read_text())
    assert hf["num_hidden_layers"] >= 1
    import pyarrow.parquet as pq

    train, held = pq.read_table(cfg.data.path), pq.read_table(cfg.eval.data_path)
    assert train.num_rows >= cfg.data.global_batch_size and held.num_rows > 0
    assert cfg.data.path != cfg.eval.data_path
    for n in (1, 2):  # the launch test runs it under torchrun with 2 processes
        assert check_launch(cfg, LaunchSpec(executor="local", nproc=n)) == []
    with pytest.raises(ValueError, match="global_batch_size"):
        check_launch(cfg, LaunchSpec(executor="local", nproc=3))
