"""Data-loss guards (issue 29): a malformed ``latest`` is refused, never "no checkpoint";
metrics.jsonl is only appended to, and a start from step 0 over logged steps with saved checkpoints
is refused; non-finite behaviour log-probs are counted and refused past a threshold; an export
refuses non-finite weights and leaves nothing behind; a checkpoint of another model is named."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from red_megatron.errors import CheckpointError, UserError
from tests.test_bad_inputs import _env, assert_refused, run_main

REPO = Path(__file__).resolve().parents[1]


# --- latest -------------------------------------------------------------------------------------------
def _root_with_step(tmp_path: Path) -> Path:
    root = tmp_path / "checkpoints"
    (root / "step_00000002").mkdir(parents=True)
    (root / "step_00000002" / "meta.json").write_text("{}")
    return root


LATEST_CASES = [  # (how latest is broken, what the refusal says)
    ("directory", "found a directory"),
    ("garbage", "expected 'step_NNNNNNNN'"),
    ("bytes", "found undecodable bytes"),
    ("missing_step", "names step_00000009, which is absent"),
    ("incomplete_step", "incomplete checkpoint in"),
]


def _break_latest(root: Path, how: str) -> None:
    latest = root / "latest"
    if how == "directory":
        latest.mkdir()
    elif how == "garbage":
        latest.write_text("../../etc\n")
    elif how == "bytes":
        latest.write_bytes(b"\xff\xfe\x00step")
    elif how == "missing_step":
        latest.write_text("step_00000009")
    elif how == "incomplete_step":
        (root / "step_00000003").mkdir()
        latest.write_text("step_00000003")


@pytest.mark.parametrize("how,expected", LATEST_CASES, ids=[c[0] for c in LATEST_CASES])
def test_malformed_latest_is_refused_not_skipped(tmp_path, how, expected):
    from red_megatron.policy.checkpoint import resolve_checkpoint

    root = _root_with_step(tmp_path)
    assert resolve_checkpoint(root) is None  # no latest at all: a fresh root (or a crash before the first save)
    (root / "latest").write_text("step_00000002")
    assert resolve_checkpoint(root) == root / "step_00000002"
    (root / "latest").unlink()
    _break_latest(root, how)
    with pytest.raises(CheckpointError, match=expected):
        resolve_checkpoint(root)


def _run_dir_with_broken_latest(tmp_path: Path, how: str) -> Path:
    run = tmp_path / "run"
    _break_latest(_root_with_step(run), how)
    return run


@pytest.mark.parametrize("how,expected", LATEST_CASES[1:], ids=[c[0] for c in LATEST_CASES[1:]])
def test_train_check_refuses_malformed_latest(tmp_path, tiny_ckpt_dir, how, expected):
    run = _run_dir_with_broken_latest(tmp_path, how)
    rc, out, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--run-dir", str(run),
                                      "--check"])
    assert_refused(rc, err, expected, str(run / "checkpoints"))


def test_train_refuses_a_latest_directory_as_a_subprocess(tmp_path, tiny_ckpt_dir):
    """The issue's case end to end: without --check the run stops before megatron starts, with one line."""
    run = _run_dir_with_broken_latest(tmp_path, "directory")
    p = subprocess.run([sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu",
                        f"model_dir={tiny_ckpt_dir}", "--run-dir", str(run), "steps=1"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr[-2000:]
    assert "malformed checkpoint pointer in" in p.stderr and "found a directory" in p.stderr
    assert not (run / "metrics.jsonl").exists()


# --- metrics.jsonl ------------------------------------------------------------------------------------
def _log(run_dir: Path, steps, value: float, resume: bool = True):
    from red_megatron.metrics import MetricsConfig, MetricsLogger

    lg = MetricsLogger(run_dir, MetricsConfig(tensorboard=False, progress=False), total_steps=10, resume=resume)
    for s in steps:
        lg.log(s, {"optim/loss": value})
    lg.close()


def _records(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["optim/loss"]) for r in map(json.loads, path.read_text().splitlines())]


def test_metrics_are_appended_and_a_retrain_over_them_is_refused(tmp_path, tiny_ckpt_dir):
    _log(tmp_path, [1, 2, 3], 1.0)
    _log(tmp_path, [2, 3, 4], 2.0)  # a resume from step 1 replays 2 and 3: appended, the old lines stay
    assert _records(tmp_path / "metrics.jsonl") == [(1, 1.0), (2, 1.0), (3, 1.0), (2, 2.0), (3, 2.0), (4, 2.0)]
    # saved checkpoints with no 'latest' at all beside logged steps: a start from 0 would retrain over them
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run / "checkpoints" / "step_00000002" / "meta.json").write_text("{}")
    argv = ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--run-dir", str(run), "--check"]
    rc, out, err = run_main("train", argv)
    assert rc == 0, err  # no metrics: the first save died before its pointer, a start from 0 loses nothing
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    rc, out, err = run_main("train", argv)
    assert_refused(rc, err, "checkpoints without a pointer in", "step_00000002 is saved but there is no 'latest'",
                   "metrics.jsonl holds logged steps")


def test_metrics_torn_line_is_cut_and_fresh_start_moves_the_file_aside(tmp_path):
    _log(tmp_path, [1, 2], 1.0)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 3, "optim/lo')  # killed mid-write
    _log(tmp_path, [3], 2.0)
    assert _records(path) == [(1, 1.0), (2, 1.0), (3, 2.0)]
    _log(tmp_path, [1], 5.0, resume=False)
    assert _records(path) == [(1, 5.0)]
    assert _records(tmp_path / "metrics.jsonl.prev1") == [(1, 1.0), (2, 1.0), (3, 2.0)]
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(UserError, match="unreadable line 2 in .*metrics.jsonl"):
        _log(tmp_path, [2], 1.0)


# --- non-finite behaviour log-probs -------------------------------------------------------------------
def test_nonfinite_behaviour_logprobs_are_counted_and_refused_past_the_threshold():
    from red_megatron.algo.config import AlgoConfig
    from red_megatron.algo.off_policy import check_nonfinite_behaviour, off_policy_metrics, truncated_is_weights

    n = 10
    old = torch.full((n,), -1.0)
    behaviour = old.clone()
    behaviour[3], behaviour[7] = float("nan"), -float("inf")
    offline = torch.zeros(n, dtype=torch.bool)
    offline[9] = True
    sample = torch.tensor([0] * 5 + [1] * 5)
    w = truncated_is_weights(old, behaviour, offline, sample, 2, cap=2.0, mask_bound=10.0)
    assert w.is_weight_N[3] == 0 and w.is_weight_N[7] == 0  # no ratio: no weight, and not NaN
    assert torch.isfinite(w.is_weight_N).all() and w.is_weight_N[9] == 1 and w.is_weight_N[0] == 1
    m = off_policy_metrics(w.sums, w.max_ratio, w.max_weight)
    assert m["offpolicy/nonfinite_behaviour_tokens"] == 2 and math.isfinite(m["offpolicy/kl_k3_behaviour_old"])
    assert m["offpolicy/is_weight_mean"] == 1.0  # the 7 finite online tokens, each ρ = 1
    check_nonfinite_behaviour(w.sums, 0.25, step=4)  # 2 of 9 online tokens: under a quarter
    with pytest.raises(ValueError, match=r"non-finite behaviour log-probs in step 4: 2 of 9 online tokens .*"
                                         r"algo.tis_max_nonfinite=0.001"):
        check_nonfinite_behaviour(w.sums, 1e-3, step=4)
    with pytest.raises(ValueError, match="tis_max_nonfinite"):
        AlgoConfig(tis_max_nonfinite=1.5)


# --- export -------------------------------------------------------------------------------------------
def test_export_refuses_nonfinite_weights_and_leaves_nothing(tmp_path):
    from red_megatron.policy.hf_export import write_hf_directory

    tensors = [("a.weight", torch.ones(4)), ("b.weight", torch.tensor([1.0, float("nan")])),
               ("c.weight", torch.tensor([float("inf")])), ("d.weight", torch.ones(2))]
    out = tmp_path / "hf"
    with pytest.raises(UserError, match=r"non-finite weights in tensor b.weight \(and 1 more tensors\)"):
        write_hf_directory(iter(tensors), {"architectures": ["X"]}, out, max_shard_bytes=8)
    assert not list(out.glob("*")), list(out.iterdir())
    ok = write_hf_directory(iter(tensors[:1] + tensors[3:]), {"architectures": ["X"]}, tmp_path / "ok")
    assert (ok / "model.safetensors").is_file() and (ok / "config.json").is_file()


# --- a checkpoint of another model --------------------------------------------------------------------
def test_checkpoint_of_another_shape_names_directory_and_tensor(tmp_path):
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from red_megatron.policy.checkpoint import check_model_shapes

    ckpt = tmp_path / "step_00000001"
    dcp.save({"decoder.layers.mlp.weight": torch.zeros(2, 8, 4), "embedding.weight": torch.zeros(16, 4)},
             storage_writer=dcp.FileSystemWriter(str(ckpt / "dist")), no_dist=True)
    same = {"model": {"a": ShardedTensor.from_rank_offsets("decoder.layers.mlp.weight", torch.zeros(2, 8, 4))}}
    check_model_shapes(ckpt, same)
    vocab = ShardedTensor.from_rank_offsets("embedding.weight", torch.zeros(32, 4), allow_shape_mismatch=True)
    check_model_shapes(ckpt, {"model": {"e": vocab}})  # a padded vocabulary may differ: megatron handles it
    other = {"model": {"a": ShardedTensor.from_rank_offsets("decoder.layers.mlp.weight", torch.zeros(2, 8, 6))}}
    with pytest.raises(CheckpointError, match=r"model shape mismatch in .*step_00000001: tensor "
                                              r"decoder.layers.mlp.weight is \[2, 8, 4\] there, \[2, 8, 6\]"):
        check_model_shapes(ckpt, other)
