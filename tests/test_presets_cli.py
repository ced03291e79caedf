"""The two new recipes as a user runs them: ``scripts/train.py --recipe tiny_cpu algo.preset=... steps=2``.

phi4_recipe runs its three stages (sft -> rollout_dpo -> grpo), each from the previous stage's export;
the DPO stage scores every sample under the frozen reference and accounts for every prompt (a pair, or
dropped). guided_fading guides every prompt at step 1 (p = 1) and none at step 2 (faded out at half of
2 steps), with the guidance in the prompt.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from red_megatron.metrics import read_metrics

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _train(run_dir: Path, *overrides: str) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--recipe", "tiny_cpu", "--run-dir", str(run_dir),
           "metrics.progress=false", "steps=2", *overrides]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"{' '.join(overrides)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


def test_phi4_recipe_runs_sft_then_rollout_dpo_then_grpo(tmp_path):
    _train(tmp_path, "algo.preset=phi4_recipe", "use_preset_schedule=false")
    stages = ["stage0_sft", "stage1_rollout_dpo", "stage2_grpo"]
    for i, name in enumerate(stages):
        recs = read_metrics(tmp_path / name)
        assert [r["step"] for r in recs] == [1, 2], name
        cfg = json.loads((tmp_path / name / "run_config.json").read_text())["config"]
        if i:
            assert cfg["model_dir"] == str(tmp_path / stages[i - 1] / "hf")
    for r in read_metrics(tmp_path / "stage1_rollout_dpo"):
        assert r["dpo/pairs"] + r["dpo/prompts_dropped"] == 8  # every prompt of the batch accounted for
        assert r["time/ref_logprobs"] > 0 and r["optim/skipped"] == 0
    assert (tmp_path / "stage2_grpo" / "hf" / "config.json").is_file()


def test_guided_fading_guides_then_fades(tmp_path):
    _train(tmp_path, "algo.preset=guided_fading", "export_hf=false")
    first, second = read_metrics(tmp_path)
    assert (first["guide/p"], first["guide/guided_fraction"]) == (1.0, 1.0) and first["guide/prefix_tokens"] > 0
    # each guided continuation had the response limit (32) less its guidance: mean length <= 32 - mean guidance
    assert first["response/online_mean_length"] <= 32 - first["guide/prefix_tokens"]
    assert (second["guide/p"], second["guide/guided_fraction"]) == (0.0, 0.0)
