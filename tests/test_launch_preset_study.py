"""scripts/preset_study.py: its bookkeeping (stage layout, training summaries from metrics.jsonl, the
report table, refusal of unknown presets) and one tiny real study from a base checkpoint (the full
study is a few minutes' run whose report is committed)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from red_megatron.study import preset_study as S

REPO = Path(__file__).resolve().parents[1]


def test_final_stage_dir_follows_the_trainer_layout(tmp_path):
    assert S.final_stage_dir(tmp_path, "red") == tmp_path
    assert S.final_stage_dir(tmp_path, "sft_then_grpo") == tmp_path / "stage1_grpo"


def test_train_summary_and_report(tmp_path):
    recs = [{"step": i, "reward/online_accuracy": a, "entropy/h_rl": h, "red/w": w}
            for i, (a, h, w) in enumerate([(0.0, 3.0, 1.0), (0.2, 2.5, 2.0), (0.4, 2.0, 3.0), (0.6, 1.5, 1.0)], 1)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    s = S.train_summary(tmp_path)
    assert s["steps"] == 4 and abs(s["online_acc"] - 0.4) < 1e-12  # mean of the last three steps
    assert s["h_rl_first"] == 3.0 and abs(s["w_mean"] - 1.75) < 1e-12 and s["h_sft_last"] is None
    assert S.train_summary(tmp_path / "missing") == {}
    rows = [{"preset": "red", "rc": 0, "seconds": 100.0, "train": s, "eval": {"acc": 42.5, "len": 7.0}},
            {"preset": "grpo", "rc": 0, "seconds": 90.0, "train": {}, "eval": {"acc": 50.0, "len": 6.0}},
            {"preset": "luffy", "rc": 1, "seconds": 5.0, "train": {}, "eval": None}]
    md = S.render_report(rows, {"acc": 10.0, "len": 20.0}, {"date": "2026-11-23", "device": "CPU", "setup": "x"},
                         "p.png")
    assert "| red | 42.50 | 7.0 | 0.400 | 3.000 → 2.000 | 1.75 / 2.00 | 100 |" in md
    assert "| luffy | failed (train rc=1) |" in md and "| (initial checkpoint) | 10.00 |" in md
    assert "grpo (50.0) > red (42.5)" in md and "![entropy dynamics per preset](p.png)" in md


def test_base_steps_default_per_recipe_and_negative_refused(capsys):
    assert S.main(["--base-sft-steps", "-1", "--out", "/nonexistent/x"]) == 2
    assert "--base-sft-steps must be >= 0, got -1" in capsys.readouterr().err
    # the default: a weak base for the tiny random-init recipes, none for pretrained checkpoints
    for recipe, want in (("tiny_cpu_study", 30), ("tiny_cpu", 30), ("qwen25_math_1p5b", 0)):
        assert S.base_sft_steps(S.build_parser().parse_args(["--recipe", recipe])) == want
    assert S.base_sft_steps(S.build_parser().parse_args(["--recipe", "qwen25_7b", "--base-sft-steps", "5"])) == 5


def test_unknown_preset_is_refused(capsys):
    assert S.main(["--presets", "red,not_a_preset", "--out", "/nonexistent/x"]) == 2
    assert "not_a_preset" in capsys.readouterr().err


@pytest.mark.vllm
@pytest.mark.slow
def test_study_from_a_base_checkpoint_end_to_end(tmp_path):
    """--base-sft-steps: a base checkpoint is trained first, every preset and the initial-checkpoint
    evaluation start from it, and the report says so. A real (tiny) run: two trainings, two vLLM evals."""
    out, report = tmp_path / "study", tmp_path / "report.md"
    rc = S.main(["--presets", "sft", "--steps", "2", "--base-sft-steps", "2", "--eval-samples", "1",
                 "--eval-max-tokens", "8", "--parallel", "2", "--out", str(out), "--report", str(report)])
    assert rc == 0, "\n".join(f"{p}:\n{p.read_text()[-2000:]}" for p in out.rglob("*.log"))
    base_hf = out / "base" / "hf"
    assert (base_hf / "config.json").exists()
    saved = json.loads((out / "runs" / "sft" / "run_config.json").read_text())
    assert saved["config"]["model_dir"] == str(base_hf) and saved["config"]["steps"] == 2
    assert json.loads((out / "base" / "run_config.json").read_text())["config"]["steps"] == 2
    text = report.read_text()
    assert "base checkpoint made by 2 SFT steps" in text
    study = json.loads((out / "study.json").read_text())
    assert study["initial"]["name"] == "initial checkpoint" and study["rows"][0]["eval"] is not None
