"""benchmarks/peer_trl.py: the side-by-side benchmark against TRL's GRPOTrainer.

The end-to-end test runs ``--quick`` (1 pair, the tiny checkpoint, 3 steps) and is skipped unless
the TRL venv exists (CI does not build it); the summary and argument checks run everywhere.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peer_trl.py"
VENV = Path(os.environ.get("RED_PEER_TRL_VENV", ROOT / "runs" / "peer_trl_venv"))


def _module():
    spec = importlib.util.spec_from_file_location("peer_trl", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_excludes_the_first_step():
    pt = _module()
    recs = [{"time": 10.0 + t, "gen_tokens": 100, "trained_tokens": 150, "rollout": 0.1 * (i + 1)}
            for i, t in enumerate((0.0, 5.0, 6.0, 8.0))]
    s = pt.summarize({"records": recs, "t_launch": 0.0, "t_exit": 21.0, "peak_rss_gib": 1.5}, ("rollout",))
    # steps 2..4 take 5, 1, 2 s (median 2); step 1 (10 s from launch) is out
    assert s["step_s"] == pytest.approx(2.0) and s["step_s_min"] == pytest.approx(1.0)
    assert s["step_s_max"] == pytest.approx(5.0)
    assert s["first_step_s"] == pytest.approx(10.0) and s["exit_s"] == pytest.approx(3.0)
    assert s["ms_per_gen_token"] == pytest.approx(1e3 * 8.0 / 300)
    assert s["stages_s"]["rollout"] == pytest.approx(0.3)  # median of steps 2..4's 0.2, 0.3, 0.4
    agg = pt.aggregate([s, {**s, "step_s": 3.0}, {**s, "step_s": 1.5}])
    assert agg["step_s"] == {"min": 1.5, "median": 2.0} and agg["pairs"] == 3
    with pytest.raises(ValueError, match="steps"):
        pt.summarize({"records": recs[:1], "t_launch": 0.0, "t_exit": 1.0, "peak_rss_gib": 0.0}, ())


def test_bad_arguments_are_refused_before_any_build(tmp_path):
    pt = _module()
    with pytest.raises(ValueError, match="--sizes"):
        pt.main(["--sizes", "huge", "--venv", str(tmp_path / "never_built")])
    with pytest.raises(ValueError, match="--steps"):
        pt.main(["--steps", "1", "--venv", str(tmp_path / "never_built")])
    assert not (tmp_path / "never_built").exists()


@pytest.mark.vllm
@pytest.mark.slow
def test_quick_run_does_the_same_work_on_both_sides(tmp_path):
    if not (VENV / ".peer_trl_versions.json").exists():
        pytest.skip(f"the TRL venv is not built at {VENV}: build it with "
                    "`.venv/bin/python benchmarks/peer_trl.py --build-venv` (or set RED_PEER_TRL_VENV)")
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--venv", str(VENV), "--work", str(tmp_path / "w"),
                          "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [js] = list((tmp_path / "r").glob("peer_trl_quick_*.json"))
    res = json.loads(js.read_text())
    tiny = res["sizes"]["tiny"]
    ours, trl = tiny["runs"]["ours"][0], tiny["runs"]["trl"][0]
    for side in (ours, trl):
        assert side["steps"] == 3
        assert 0 < side["gen_tokens_per_step"] <= 8 * 4 * 32  # at most 32 new tokens a sample
        assert side["step_s"] > 0 and side["first_step_s"] > side["step_s"] and side["peak_rss_gib"] > 0.1
    # The same prompts on both sides: trained minus generated tokens is the prompts' own tokens.
    prompt_ours = ours["trained_tokens_per_step"] - ours["gen_tokens_per_step"]
    prompt_trl = trl["trained_tokens_per_step"] - trl["gen_tokens_per_step"]
    assert prompt_ours == pytest.approx(prompt_trl, abs=0.5) and prompt_ours > 8 * 4
    assert set(ours["stages_s"]) == {"rollout", "old_logprobs", "train", "refit", "other"}
    assert ours["cpu_step_s"] > 0 and trl["cpu_step_s"] > 0
    assert res["meta"]["trl_venv"]["torch"].startswith("2.13.0") and res["meta"]["trl_venv"]["trl"]
    md = js.with_suffix(".md").read_text()
    assert "| step, steady state (s) |" in md and "under load" in md


def test_steps_per_size():
    pt = _module()
    assert pt.parse_steps("20,50m=8", ["tiny", "50m"]) == {"tiny": 20, "50m": 8}
    assert pt.parse_steps("5", ["10m"]) == {"10m": 5}
    for bad in ("1", "20,big=3", "50m=8"):
        with pytest.raises(ValueError, match="--steps"):
            pt.parse_steps(bad, ["tiny", "50m"])
