"""The chain base (STUDY_DESIGN §6.4): its shape, its cache keys, the gate's arithmetic and verdicts, and
a very small base built end to end through the project's SFT path with its gate report written."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from red_megatron.study import chain_base as cb

REPO = Path(__file__).resolve().parents[1]


def test_pass_at_k_is_the_unbiased_estimator():
    assert cb.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert cb.pass_at_k(4, 1, 4) == 1.0 and cb.pass_at_k(4, 0, 4) == 0.0
    assert cb.pass_at_k(32, 2, 8) == pytest.approx(1 - (30 * 29 * 28 * 27 * 26 * 25 * 24 * 23)
                                                  / (32 * 31 * 30 * 29 * 28 * 27 * 26 * 25))
    with pytest.raises(ValueError, match="pass_at_k"):
        cb.pass_at_k(4, 1, 5)


def _samples(acc_by_k: dict[int, float], n: int, problems: int = 8, seed: int = 0):
    """Fake eval samples: row r has k = r // problems; a problem's samples are right with prob acc_by_k[k]."""
    rng = random.Random(seed)
    k_of_row, out = {}, []
    for k, acc in acc_by_k.items():
        for p in range(problems):
            row = len(k_of_row)
            k_of_row[row] = k
            out += [{"row": row, "reward": float(rng.random() < acc), "length": 10 * k, "truncated": False}
                    for _ in range(n)]
    return out, k_of_row


def test_gate_passes_a_base_with_partial_ability_and_fails_others():
    partial = {1: 1.0, 2: 1.0, 3: 0.95, 4: 0.5, 5: 0.2, 6: 0.0, 7: 0.0, 8: 0.0, 9: 0.0}
    sampled, k_of_row = _samples(partial, 32)
    greedy, _ = _samples({k: 1.0 if k <= 3 else 0.0 for k in partial}, 1)
    rep = cb.gate_report(greedy, sampled, k_of_row)
    assert rep["passed"], rep["checks"]
    names = [c["name"] for c in rep["checks"]]
    assert names == ["easy (k<=3) greedy", "k=4 pass@1 (T=1)", "k>=6 pass@32 (T=1)"]
    assert rep["checks"][0]["value"] == 100.0 and rep["checks"][2]["value"] == 0.0
    assert 30 <= rep["checks"][1]["value"] <= 70 and rep["checks"][1]["problems"] == 8
    assert rep["per_k"]["4"]["pass@32"] >= rep["per_k"]["4"]["pass@1"]
    # a base that already solves the hard band (RL could recall it): the third check fails
    hard = {**partial, 6: 0.2, 7: 0.1}
    s2, _ = _samples(hard, 32)
    rep2 = cb.gate_report(greedy, s2, k_of_row)
    assert not rep2["passed"] and [c["passed"] for c in rep2["checks"]] == [True, True, False]
    # a base that solves k=4 almost always: the horizon is too long
    s3, _ = _samples({**partial, 4: 1.0}, 32)
    assert [c["passed"] for c in cb.gate_report(greedy, s3, k_of_row)["checks"]] == [True, False, True]
    # too few samples for pass@32: reported, and never a pass
    s4, _ = _samples(partial, 4)
    rep4 = cb.gate_report(greedy, s4, k_of_row)
    assert not rep4["passed"] and rep4["checks"][2]["name"] == "k>=6 pass@4 (T=1)"
    md = cb.render_gate_md(rep4)
    assert "FAILED (only 4 T=1 samples" in md and "| 4 | 8 |" in md


def test_gate_refuses_uneven_samples_and_unknown_rows():
    sampled, k_of_row = _samples({1: 1.0, 4: 0.5, 6: 0.0}, 4)
    with pytest.raises(ValueError, match="same number of T=1 samples"):
        cb.gate_report(sampled, sampled[:-1], k_of_row)
    with pytest.raises(ValueError, match="row 99"):
        cb.gate_report([{"row": 99, "reward": 1.0, "length": 1, "truncated": False}], sampled, k_of_row)


def test_chain_shape_and_corpus(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    cfg = shape_config("chain", seed=3)
    assert (cfg.hidden, cfg.heads, cfg.layers, cfg.kv_heads, cfg.intermediate, cfg.head_dim, cfg.vocab_size,
            cfg.max_position) == (192, 6, 4, 2, 512, 32, 512, 512)
    out = make_tiny_checkpoint(cfg, tmp_path / "c", corpus="chain")
    n = sum(t.numel() for t in load_file(str(out / "model.safetensors")).values())
    assert 1.7e6 < n < 1.85e6  # STUDY_DESIGN: ≈ 1.78M parameters
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 512
    assert tok.tokenize(" verify the whole chain again") == ["Ġverify", "Ġthe", "Ġwhole", "Ġchain", "Ġagain"]
    with pytest.raises(ValueError, match="unknown tiny checkpoint shape"):
        shape_config("huge")
    with pytest.raises(ValueError, match="corpus must be one of"):
        make_tiny_checkpoint(cfg, tmp_path / "d", corpus="no_such_corpus")
    # the script: --shape and --corpus; the default shape and corpus are unchanged
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_checkpoint.py"), "--out", str(tmp_path / "s"),
                    "--shape", "chain", "--corpus", "chain", "--layers", "2"], check=True, capture_output=True)
    hf = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]) == (192, 2, 512)


def test_cache_keys_follow_the_inputs(tmp_path):
    import dataclasses

    from configs.chain_cpu import base_dir, base_task, chain_base
    from red_megatron.study.tasks.chain import ChainTaskConfig

    a = base_dir(0, root=tmp_path)
    assert a == base_dir(0, root=tmp_path)
    assert len({a, base_dir(1, root=tmp_path), base_dir(0, 350, root=tmp_path),
                base_dir(0, overrides=["data.global_batch_size=8"], root=tmp_path)}) == 4
    # trace knobs do not change the base (its pretrain split holds native rows only); problem knobs do
    assert base_dir(0, task=dataclasses.replace(base_task(), p_replay=0.3), root=tmp_path) == a
    assert base_dir(0, task=ChainTaskConfig(pretrain_k_probs={1: .3, 2: .3, 3: .25, 4: .1, 5: .05}),
                    root=tmp_path) != a
    with pytest.raises(FileNotFoundError, match="build_chain_base.py"):
        chain_base(0, root=tmp_path)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_very_small_base_is_built_gated_reported_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("RED_ASSETS", str(tmp_path / "assets"))
    report = tmp_path / "report.md"
    cmd = [sys.executable, str(REPO / "scripts" / "build_chain_base.py"), "--steps", "2", "--gate-per-k", "2",
           "--gate-samples", "2", "--report", str(report), "data.global_batch_size=8"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 3), r.stdout[-3000:] + r.stderr[-3000:]
    from configs.chain_cpu import base_dir, chain_base

    d = base_dir(0, 2, overrides=["data.global_batch_size=8"])
    rep = json.loads((d / "gate.json").read_text())
    assert (d / "hf" / "config.json").exists() and (d / "gate.md").exists() and (d / "inputs.json").exists()
    assert [c["problems"] for c in rep["checks"]] == [6, 2, 8]  # 2 problems a k: k<=3, k=4, k>=6
    assert all(0.0 <= c["value"] <= 100.0 for c in rep["checks"])
    assert set(rep["per_k"]) == {str(k) for k in range(1, 10)} and rep["samples_per_problem"] == 2
    assert not rep["passed"]  # two samples can never pass a pass@32 gate
    assert rep["meta"]["sft_steps"] == 2 and rep["meta"]["steps_logged"] == 2
    assert "k>=6 pass@2 (T=1)" in report.read_text()
    with pytest.raises(ValueError, match="failed its gate"):
        chain_base(0, 2, overrides=["data.global_batch_size=8"])
    assert chain_base(0, 2, overrides=["data.global_batch_size=8"], allow_failed_gate=True) == d / "hf"
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 3 and "reusing" in again.stdout  # cached: not trained again


def test_the_gated_bases_keys_do_not_move(tmp_path):
    """docs/STUDY.md and the scaling study name the middle size's gated base by its key: a field added to the
    checkpoint config (the MoE ones) must not move the dense bases' keys (rebuilding one is ~1 h of CPU)."""
    from configs.chain_cpu import base_dir
    from red_megatron.study.tiny_checkpoint import shape_config

    assert base_dir(0, root=tmp_path).name == "chain_base_bfbde7b603f6"
    assert "experts" not in shape_config("chain").key_fields() and "experts" in shape_config("moe").key_fields()
