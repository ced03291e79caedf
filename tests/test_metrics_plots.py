import json
import math

import pytest

from red_megatron.metrics import MetricsConfig, MetricsLogger, read_metrics
from red_megatron.plots import plot_run, plot_runs_side_by_side


def _fake_run(run_dir, steps=5, offset=0.0):
    logger = MetricsLogger(run_dir, MetricsConfig(progress=False), total_steps=steps)
    for s in range(1, steps + 1):
        logger.log(s, {"entropy/h_rl": 1.0 / s + offset, "entropy/h_sft": 0.5 + 0.1 * s, "red/w": min(7.0, s),
                       "reward/mean": 0.1 * s, "reward/online_accuracy": 0.1 * s, "reward/offline_accuracy": 1.0,
                       "response/online_mean_length": 10.0 + s, "red/rbar_hist": [0.0, 0.5, 1.0]})
    logger.close()


def test_jsonl_round_trip_and_resume_keeps_last(tmp_path):
    _fake_run(tmp_path, steps=3)
    # a resumed run re-logs step 3 and goes on: the reader keeps the newest record per step
    logger = MetricsLogger(tmp_path, MetricsConfig(progress=False, tensorboard=False), total_steps=4)
    logger.log(3, {"red/w": 2.5, "loss/policy": float("nan")})
    logger.log(4, {"red/w": 3.0})
    logger.close()
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[2]["red/w"] == 2.5 and recs[2]["loss/policy"] == "nan"
    assert recs[0]["red/rbar_hist"] == [0.0, 0.5, 1.0]
    assert (tmp_path / "tensorboard").is_dir()


def test_torn_last_line_is_ignored_but_torn_middle_is_an_error(tmp_path):
    _fake_run(tmp_path, steps=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "red/w"')
    assert len(read_metrics(tmp_path)) == 2
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps({"step": 4}) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:3"):
        read_metrics(tmp_path)


def test_plots_are_written(tmp_path):
    _fake_run(tmp_path / "a")
    _fake_run(tmp_path / "b", offset=0.3)
    paths = plot_run(tmp_path / "a")
    assert [p.name for p in paths] == ["entropy_dynamics.png", "reward.png", "response_length.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    grid = plot_runs_side_by_side({"red": tmp_path / "a", "grpo": tmp_path / "b"}, tmp_path / "grid.png")
    assert grid.stat().st_size > 5000


def test_plot_of_empty_run_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no steps"):
        plot_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "missing")
