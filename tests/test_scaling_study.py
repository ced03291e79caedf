"""The scaling study's harness (red_megatron/study/scaling.py, ``red-study --sizes``).

Fast: the fair-lr protocol and resumability with a stand-in cell runner that writes what the chain study's
cells write (markers last, eval samples); the command line's refusals; ``--check`` of the GPU plan on
config-only Qwen2.5 0.5B/1.5B/3B/7B directories. Slow: a real smoke (tiniest chain shape, 2 steps a
cell, one lr point, sft) through the trainer and the eval, rerun to show finished cells are skipped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from red_megatron.study.runner import cell_dir
from red_megatron.study.scaling import ScalingSpec, choose_lr, main_phase, plan_rows, run_scaling
from tests.test_cli import write_shaped_model

REPO = Path(__file__).resolve().parents[1]
# a preset's held-out accuracy (%) at lr multiplier m: red peaks at 2x, sft at 0.5x, grpo is flat (tie -> 1x)
ACC = {"red": {0.5: 40, 1.0: 60, 2.0: 70}, "sft": {0.5: 50, 1.0: 45, 2.0: 10}, "grpo": {0.5: 30, 1.0: 30, 2.0: 30}}


class FakeRunner:
    """run_study's contract: every (config, seed) of the spec without its eval marker is trained and evaluated,
    the markers written last; on_progress after each cell."""

    def __init__(self):
        self.done: list[tuple[str, str, int, float]] = []

    def __call__(self, spec, on_progress=None, log=print):
        lr = float(next(o for o in spec.overrides if o.startswith("policy.lr=")).split("=")[1])
        mult = lr / 3e-4
        for seed in spec.seeds:
            for c in (["base"] if spec.include_base else []) + spec.configs:
                d = cell_dir(spec.out, c, seed)
                if (d / "eval.done.json").exists():
                    continue
                acc = 20 if c == "base" else ACC.get(c, {1.0: 50}).get(round(mult, 3), 0) + seed
                (d / "eval").mkdir(parents=True, exist_ok=True)
                rows = [{"reward": float(i < acc), "truncated": c == "sft" and mult == 2.0} for i in range(100)]
                (d / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                (d / "train.done.json").write_text("{}")
                (d / "eval.done.json").write_text("{}")
                self.done.append((str(Path(spec.out).relative_to(self.root)), c, seed, lr))
                if on_progress:
                    on_progress()
        return []


def _spec(tmp_path, presets=("red", "red_wconst", "sft", "grpo"), sizes=("s", "m")):
    return ScalingSpec(out=tmp_path / "out", bases={s: tmp_path / s for s in sizes}, presets=list(presets),
                       seeds=[0, 1, 2], lr=3e-4, val_data=tmp_path / "val.parquet", test_data=tmp_path / "test.parquet")


def test_fair_lr_protocol_then_seeds_at_each_presets_choice_and_resume(tmp_path):
    spec, run = _spec(tmp_path), FakeRunner()
    run.root = spec.out
    s = run_scaling(spec, runner=run, log=lambda *_: None)
    for size in ("s", "m"):
        got = s["sizes"][size]
        assert got["lr_choice"] == {"red": 2.0, "sft": 0.5, "grpo": 1.0}
        assert got["lr"]["red"] == pytest.approx(6e-4) and got["lr"]["sft"] == pytest.approx(1.5e-4)
        assert got["lr_curve"]["sft"]["x2"] == {"acc": 10.0, "trunc": 100.0, "samples": 100}  # the collapse rate
        assert json.loads((spec.out / size / "lr_choice.json").read_text())["red"] == pytest.approx(6e-4)
        assert set(got["main"]) == {"base", "red", "red_wconst", "sft", "grpo"}
        assert got["main"]["red"]["2"]["acc"] == 72.0  # seed 2 at red's own lr (2x)
    lr_cells = [d for d in run.done if "/lr/" in d[0]]
    # the grid: 3 tuned presets x 3 lrs, one seed, base once per size on val; red_wconst has no grid
    assert len(lr_cells) == 2 * (3 * 3 + 1) and {d[2] for d in lr_cells} == {0}
    assert not any(d[1] == "red_wconst" for d in lr_cells)
    wconst = [d for d in run.done if d[1] == "red_wconst"]
    assert len(wconst) == 6 and all(d[3] == pytest.approx(6e-4) for d in wconst)  # at red's lr, beside red
    assert json.loads((spec.out / "scaling.json").read_text())["sizes"]["m"]["lr_choice"]["sft"] == 0.5
    n = len(run.done)
    run_scaling(spec, runner=run, log=lambda *_: None)
    assert len(run.done) == n  # a rerun skips every finished cell


def test_controls_run_beside_red_without_a_grid(tmp_path):
    spec = _spec(tmp_path, presets=("red", "red_wconst", "frozen_w", "grpo"), sizes=("m",))
    assert spec.tuned == ["red", "grpo"]
    studies = dict(main_phase(spec, "m", {"red": 2.0, "grpo": 1.0}))
    assert studies["red"].configs == ["red", "frozen_w", "red_wconst"] and studies["grpo"].configs == ["grpo"]
    assert studies["red"].overrides[-1] == "policy.lr=0.0006"  # frozen_w's own lr (1e-12) comes after, in the runner


def test_phase_lr_stops_before_the_seeds_and_main_needs_the_grid(tmp_path):
    spec, run = _spec(tmp_path, presets=("red", "sft"), sizes=("m",)), FakeRunner()
    run.root = spec.out
    with pytest.raises(ValueError, match="lr grid is not finished"):
        run_scaling(spec, phase="main", runner=run, log=lambda *_: None)
    run_scaling(spec, phase="lr", runner=run, log=lambda *_: None)
    assert all("/lr/" in d[0] for d in run.done) and not (spec.out / "m" / "main").exists()
    run_scaling(spec, phase="main", runner=run, log=lambda *_: None)
    assert any("/main/" in d[0] for d in run.done)


def test_premise_off_variants_one_seed_at_each_presets_choice(tmp_path):
    from red_megatron.study.scaling import run_variants

    spec, run = _spec(tmp_path, presets=("red", "sft", "grpo", "red_wconst"), sizes=("m",)), FakeRunner()
    run.root = spec.out
    got = []
    with pytest.raises(ValueError, match="lr grid is not finished"):
        run_variants(spec, {"clean": tmp_path / "clean.parquet"}, runner=run, log=lambda *_: None)
    run_scaling(spec, phase="lr", runner=run, log=lambda *_: None)
    run_variants(spec, {"clean": tmp_path / "c.parquet", "harsh": tmp_path / "h.parquet"},
                 runner=lambda s, log: got.append(s) or run(s, log=log), log=lambda *_: None)
    assert [(s.out.relative_to(spec.out).as_posix(), s.configs) for s in got] == [
        ("m/variant_clean/red", ["red"]), ("m/variant_clean/sft", ["sft"]), ("m/variant_clean/grpo", ["grpo"]),
        ("m/variant_harsh/red", ["red"]), ("m/variant_harsh/sft", ["sft"]), ("m/variant_harsh/grpo", ["grpo"])]
    red = got[0]
    assert red.seeds == [0] and not red.include_base and str(red.eval_data) == str(spec.test_data)
    assert red.overrides[-2:] == ["policy.lr=0.0006", f"data.path={tmp_path / 'c.parquet'}"]  # red's choice: 2x


def test_choose_lr_ties_and_unfinished():
    assert choose_lr({"x0.5": {"acc": 50}, "x1": {"acc": 50}, "x2": {"acc": 50}}) == 1.0
    assert choose_lr({"x0.5": {"acc": 50}, "x2": {"acc": 50}}) == 0.5
    # red's measured curve on chain_val (docs/STUDY.md): 2x is 0.13 points above 1x, a tie within one seed's noise
    assert choose_lr({"x0.5": {"acc": 62.89}, "x1": {"acc": 93.92}, "x2": {"acc": 94.05}}) == 1.0
    assert choose_lr({"x0.5": {"acc": 62.89}, "x1": {"acc": 92.9}, "x2": {"acc": 94.05}}) == 2.0
    assert choose_lr({"x0.5": {"acc": 50}, "x1": None}) is None


def test_plan_and_validation(tmp_path):
    rows = plan_rows(_spec(tmp_path, sizes=("m",)))
    assert sum(r["phase"] == "lr" for r in rows) == 9 and sum(r["phase"] == "main" for r in rows) == 4
    for presets, match in ((("red_wconst",), "needs red"), (("nosuch",), "unknown"), (("grpo", "frozen_w"), "frozen_w needs red")):
        with pytest.raises(ValueError, match=match):
            _spec(tmp_path, presets=presets).validate()
    with pytest.raises(ValueError, match="lr-mults"):
        dataclasses.replace(_spec(tmp_path), lr_mults=(1.0, 1.0)).validate()


def _study(argv: list[str]) -> tuple[int, str, str]:
    from red_megatron.cli.study import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_gpu_plan_check_on_qwen25_sizes(tmp_path, tiny_ckpt_dir, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    names = {"0.5b": "Qwen2.5-0.5B", "1.5b": "Qwen2.5-1.5B", "3b": "Qwen2.5-3B", "7b": "Qwen2.5-7B"}
    sizes = ",".join(f"{k}={write_shaped_model(tmp_path / v, tiny_ckpt_dir, v)}" for k, v in names.items())
    common = ["--sizes", sizes, "--recipe", "qwen25_7b", "--val-data", "/d/val.parquet", "--test-data",
              "/d/test.parquet", "--out", str(tmp_path / "plan")]
    rc, out, err = _study([*common, "--world-size", "16", "--check"])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines[:4]] == ["size 0.5b", "size 1.5b", "size 3b", "size 7b"]
    assert "24 layers, hidden 896" in lines[0] and "28 layers, hidden 3584" in lines[3]
    assert lines[-1].startswith("check OK: 120 runs planned") and "of 2e-06" in lines[-1]  # 4 sizes × (7 × 3 lr + 9 main)
    rc, _, err = _study([*common, "--world-size", "6", "--check"])  # TP 2: DP 3 does not divide 64 prompts
    assert rc == 2 and "size 0.5b" in err and "divisible" in err and err.count("\n") == 1
    rc, out, _ = _study([*common, "--dry-run", "--presets", "red,sft_then_grpo", "--seeds", "0,1"])
    assert rc == 0 and len(out.strip().splitlines()) == 4 * (2 * 3 + 2)
    assert not (tmp_path / "plan").exists()  # neither mode writes anything


@pytest.mark.parametrize("argv, words", [
    (["--sizes", "xl"], ["unknown size 'xl'"]),
    (["--sizes", "m=/nonexistent"], ["not an HF checkpoint directory"]),
    (["--sizes", "s,s"], ["given twice"]),
])
def test_bad_sizes_are_refused_in_one_line(argv, words):
    rc, _, err = _study(argv)
    assert rc == 2 and err.count("\n") == 1 and all(w in err for w in words), err


def test_a_missing_size_base_names_the_build_command_with_its_steps(tmp_path, monkeypatch):
    """l's default base has 1450 SFT steps (it first passes §6.4 there), the others 450; --base-steps overrides."""
    monkeypatch.setenv("RED_ASSETS", str(tmp_path / "assets"))  # empty: no base is cached
    for argv, want in ((["--sizes", "l"], "--shape chain_l --base-seed 0 --steps 1450"),
                       (["--sizes", "m"], "--shape chain --base-seed 0 --steps 450"),
                       (["--sizes", "l", "--base-steps", "l=1400"], "--shape chain_l --base-seed 0 --steps 1400")):
        rc, _, err = _study([*argv, "--out", str(tmp_path / "out")])
        assert rc == 2 and err.count("\n") == 1 and "no gated chain base" in err and err.rstrip().endswith(want), err


def test_a_summary_under_another_base_than_the_cells_is_refused(tmp_path, tiny_ckpt_dir):
    """--summary-only with a size's default base, over cells run from a --base-steps one, labelled the size's
    report with the wrong base (session 9); now it names both."""
    cell = tmp_path / "out" / "t" / "lr" / "x1"
    cell.mkdir(parents=True)
    (cell / "study_spec.json").write_text(json.dumps({"base": "/elsewhere/hf"}))
    rc, _, err = _study(["--sizes", f"t={tiny_ckpt_dir}", "--summary-only", "--out", str(tmp_path / "out")])
    assert rc == 2 and err.count("\n") == 1 and f"were run from the base /elsewhere/hf, not {tiny_ckpt_dir}" in err, err
    assert not (tmp_path / "out" / "scaling.json").exists()
    (cell / "study_spec.json").write_text(json.dumps({"base": str(tiny_ckpt_dir)}))
    rc, _, err = _study(["--sizes", f"t={tiny_ckpt_dir}", "--summary-only", "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "scaling.json").exists(), err


def test_a_base_without_a_passed_gate_is_refused(tmp_path, tiny_ckpt_dir):
    rc, _, err = _study(["--sizes", f"t={tiny_ckpt_dir}", "--out", str(tmp_path)])
    assert rc == 2 and "no gate report" in err and "--allow-failed-gate" in err
    (tiny_ckpt_dir.parent / "gate.json").write_text(json.dumps({"passed": False}))
    try:
        rc, _, err = _study(["--sizes", f"t={tiny_ckpt_dir}", "--out", str(tmp_path)])
        assert rc == 2 and "failed its gate" in err
    finally:
        (tiny_ckpt_dir.parent / "gate.json").unlink()


@pytest.mark.vllm
@pytest.mark.slow
def test_scaling_smoke_real_cells(tmp_path):
    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    base = make_tiny_checkpoint(dataclasses.replace(shape_config("chain_s", seed=0), layers=1), tmp_path / "b" / "hf",
                                corpus="chain")
    cmd = [sys.executable, "-m", "red_megatron.cli.study", "--sizes", f"t={base}", "--presets", "sft", "--seeds", "0",
           "--lr-mults", "1", "--steps", "2", "--eval-samples", "1", "--eval-limit", "1", "--parallel", "1",
           "--out", str(tmp_path / "out"), "--allow-failed-gate", "data.global_batch_size=2"]
    env = {**os.environ, "RED_ASSETS": str(tmp_path / "assets"), "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "scaling.json").read_text())["sizes"]["t"]
    assert s["lr_choice"] == {"sft": 1.0} and s["lr_curve"]["sft"]["x1"]["samples"] == 3  # 1 problem a band
    assert set(s["main"]) == {"base", "sft"} and s["main"]["sft"]["0"] is not None
    cfg = json.loads((tmp_path / "out/t/main/sft/seed0/sft/run/run_config.json").read_text())["config"]
    assert cfg["steps"] == 2 and cfg["policy"]["lr"] == pytest.approx(3e-4)
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and ": training" not in again.stdout and ": eval" not in again.stdout


def test_variant_splits_are_the_chain_task_with_other_trace_knobs(monkeypatch):
    import argparse

    import red_megatron.study.assets as assets
    from red_megatron.errors import UserError
    from red_megatron.study.scaling_cli import variant_splits
    from red_megatron.study.tasks.chain import ChainTaskConfig

    ns = lambda v, val=None: argparse.Namespace(variants=v, val_data=val, test_data=None)  # noqa: E731
    with pytest.raises(UserError, match="--variants: unknown \\['latent'\\]"):
        variant_splits(ns("clean,latent"))
    with pytest.raises(UserError, match="no --val-data"):
        variant_splits(ns("clean", val="v.parquet"))
    made = []
    monkeypatch.setattr(assets, "ensure_chain_data", lambda task: made.append(task) or {"train": Path("t.parquet")})
    assert variant_splits(ns("clean,imperfect")) == {"clean": Path("t.parquet"), "imperfect": Path("t.parquet")}
    base = ChainTaskConfig()
    assert made == [dataclasses.replace(base, p_check=0.0, p_replay=0.0), dataclasses.replace(base, p_wrong=0.1)]
    assert made[0].problem_fields() == base.problem_fields()  # same problems: the base and test split still hold


def test_failed_cells_are_named_at_the_end_and_set_the_exit_code(tmp_path, monkeypatch, capsys):
    """red-study --sizes runs every cell it can; a cell that failed is named with its child's error line, exit 1."""
    from red_megatron.study import runner, scaling_cli

    def fake_run_study(study, on_progress=None, log=print):
        return [{"config": c, "seed": s, "eval": None,
                 "train": {"rc": 2, "why": "error: bad row 3 in data.path (log: x)"} if c == "sft" else {"rc": 0}}
                for c in study.configs for s in study.seeds]

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    base = tmp_path / "b"
    base.mkdir()
    (base / "config.json").write_text("{}")
    argv = ["--sizes", f"t={base}", "--presets", "red,sft", "--phase", "lr", "--lr-mults", "1", "--val-data", "v",
            "--test-data", "t", "--out", str(tmp_path / "out"), "--allow-failed-gate"]
    assert scaling_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "[scaling] FAILED t/lr/x1 sft seed 0 train: error: bad row 3 in data.path (log: x)" in err, err
    assert "red seed" not in err


def test_commands_on_other_sizes_and_presets_keep_each_others_summary(tmp_path):
    """Two commands side by side (one size each, then another preset subset) share scaling.json: each adds its own
    sizes and presets; the report reads every size from it."""
    run = FakeRunner()
    s_spec = _spec(tmp_path, presets=("red",), sizes=("s",))
    m_spec = _spec(tmp_path, presets=("sft",), sizes=("m",))
    run.root = s_spec.out
    run_scaling(s_spec, phase="lr", runner=run, log=lambda *_: None)
    run_scaling(m_spec, phase="lr", runner=run, log=lambda *_: None)
    run_scaling(dataclasses.replace(m_spec, presets=["grpo"]), phase="lr", runner=run, log=lambda *_: None)
    got = json.loads((s_spec.out / "scaling.json").read_text())
    assert set(got["sizes"]) == {"s", "m"} and got["presets"] == ["red", "sft", "grpo"]
    assert got["sizes"]["s"]["lr_choice"] == {"red": 2.0}
    assert got["sizes"]["m"]["lr_choice"] == {"sft": 0.5, "grpo": 1.0}  # the second subset kept the first's
    assert json.loads((s_spec.out / "m" / "lr_choice.json").read_text()) == pytest.approx({"sft": 1.5e-4, "grpo": 3e-4})
