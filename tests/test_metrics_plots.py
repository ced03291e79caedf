import json
import math
import sys
from pathlib import Path

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


# ------------------------------------------------------------------ console view, sinks (issue 20)
def test_plain_lines_off_a_terminal_every_n_steps_with_full_times(tmp_path):
    import io
    import re

    from red_megatron.metrics import PROGRESS_KEYS

    out = io.StringIO()
    logger = MetricsLogger(tmp_path, MetricsConfig(tensorboard=False, log_every=2), total_steps=5, tty=False,
                           stream=out)
    full = {key: 0.5 for key, _, _ in PROGRESS_KEYS}
    for s in range(1, 6):
        logger.log(s, full)
    logger.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["2/5", "4/5", "5/5"]  # every 2 steps and the last
    for line in lines:
        for _, label, _ in PROGRESS_KEYS:
            assert f" {label}=" in line, (label, line)
        assert re.search(r"elapsed=\d+:\d\d:\d\d ETA=\d+:\d\d:\d\d$", line), line  # not cut ("0:00:…")
    assert MetricsLogger(tmp_path / "x", MetricsConfig(tensorboard=False), total_steps=450, tty=False).every == 5
    with pytest.raises(ValueError, match="metrics.log_every"):
        MetricsConfig(log_every=-1)


def test_progress_keys_exist_in_a_real_metrics_dict():
    """The bar and the lines ask for keys the trainer really logs (it logged optim/loss, the bar asked loss/policy)."""
    from pathlib import Path

    from red_megatron.metrics import PROGRESS_KEYS
    from scripts.regen_golden import all_recordings

    golden = all_recordings("red")[0]["trace"][0]  # any CPU's recording: the keys are the same
    trainer_src = (Path(__file__).parents[1] / "red_megatron" / "trainer.py").read_text()
    for key, _, _ in PROGRESS_KEYS:
        # the golden traces keep every metric but the machine-dependent throughput
        assert key in golden or f'm["{key}"]' in trainer_src, key


def test_format_duration():
    from red_megatron.metrics import format_duration

    assert format_duration(0) == "0:00:00" and format_duration(3725.4) == "1:02:05"
    assert format_duration(30 * 3600) == "30:00:00" and format_duration(float("nan")) == "?"


def test_tensorboard_sink_scalars_and_rbar_values_histogram(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, MetricsConfig(progress=False), total_steps=3)
    hists = {1: [0, 0, 0, 0, 0, 0, 0, 4], 2: [2, 0, 0, 0, 0, 0, 0, 2], 3: [0, 1, 0, 3, 0, 0, 0, 0]}
    for s in (1, 2, 3):
        logger.log(s, {"red/w": 0.25 * s, "entropy/h_rl": 1.0 / s, "red/rbar_hist": hists[s]})
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("red/w")] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [round(e.value, 6) for e in acc.Scalars("entropy/h_rl")] == [1.0, 0.5, round(1 / 3, 6)]
    h = {e.step: e.histogram_value for e in acc.Histograms("red/rbar_hist")}
    assert sorted(h) == [1, 2, 3]
    # values of r̄ in [0, 1] (bin i = i/7), not the 8 counts: all 4 groups at r̄=1 at step 1
    assert (h[1].min, h[1].max, h[1].num, h[1].sum) == (1.0, 1.0, 4, 4.0)
    assert (h[2].min, h[2].max, h[2].num) == (0.0, 1.0, 4) and abs(h[2].sum - 2.0) < 1e-9
    assert abs(h[3].min - 1 / 7) < 1e-9 and abs(h[3].max - 3 / 7) < 1e-9 and abs(h[3].sum - 10 / 7) < 1e-9
    assert all(lim <= 1.0 + 1 / 14 + 1e-9 for lim in h[3].bucket_limit)


def _wandb_history(run_file):
    """The history rows of a W&B offline run file (its record log: 7-byte chunk headers in 32 KiB blocks),
    and whether its exit record is there (wandb-core may still be writing after ``finish()`` returns)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", run_file
    pos, buf, block, rows, done = 7, b"", 32768, [], False
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            done |= rec.WhichOneof("record_type") == "exit"
            if rec.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows, done


def test_wandb_offline_sink_round_trip(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb; it does not pull torch)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = MetricsLogger(tmp_path, MetricsConfig(progress=False, tensorboard=False, wandb_project="red-test"),
                           total_steps=3)
    for s in (1, 2, 3):
        logger.log(s, {"red/w": 0.5 * s, "optim/loss": -0.1 * s, "red/rbar_hist": [1, 0, 0, 0, 0, 0, 0, s]})
    logger.close()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list((tmp_path / "wandb").rglob("*"))
    import time

    for _ in range(300):  # the offline writer is another process: wait for the run's exit record (<= 30 s)
        rows, done = _wandb_history(runs[0])
        if done:
            break
        time.sleep(0.1)
    assert [r["_step"] for r in rows] == [1, 2, 3], (runs[0].stat().st_size, rows)
    assert [r["red/w"] for r in rows] == [0.5, 1.0, 1.5]
    assert [round(r["optim/loss"], 6) for r in rows] == [-0.1, -0.2, -0.3]
    assert rows[2]["red/rbar_hist/_type"] == "histogram" and rows[2]["red/rbar_hist/values"] == [1, 0, 0, 0, 0, 0, 0, 3]
    assert rows[2]["red/rbar_hist/bins"][0] < 0.0 < rows[2]["red/rbar_hist/bins"][1]  # bin 0 is centred on r̄=0


@pytest.fixture
def run_logging(monkeypatch):
    """The root logger as setup_run_logging leaves it, restored afterwards; VLLM_* logging env unset."""
    import logging

    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)  # restored (unset) after the test
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    logging.captureWarnings(False)  # an earlier test may have left it on: then setup_run_logging would not take over
    yield root
    logging.captureWarnings(False)
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    root.setLevel(saved[1])


def test_library_logs_go_to_the_run_dirs_file(tmp_path, capsys, run_logging):
    import logging
    import warnings

    from red_megatron.metrics import setup_run_logging

    path = setup_run_logging(tmp_path, verbose=False)
    vcfg = json.loads(Path(__import__("os").environ["VLLM_LOGGING_CONFIG_PATH"]).read_text())
    assert vcfg["handlers"]["file"]["filename"] == str(path.resolve())  # vLLM's processes: the same file
    assert vcfg["loggers"]["vllm"]["propagate"] is False
    logging.getLogger("megatron.core.optimizer").info("Setting up optimizer with config OptimizerConfig(...)")
    warnings.warn("Apex is not installed. Falling back to Torch Norm", UserWarning)
    logging.getLogger("red_megatron.trainer").info("resumed at step 4")
    for h in run_logging.handlers:
        h.flush()
    out, err = capsys.readouterr()
    text = path.read_text()
    assert path == tmp_path / "logs" / "library.log"
    assert "OptimizerConfig" in text and "Apex is not installed" in text and "resumed at step 4" in text
    assert "OptimizerConfig" not in err and "Apex" not in err
    assert "resumed at step 4" in out and "resumed" not in err  # INFO on stdout: stderr is for problems
    setup_run_logging(tmp_path, verbose=True)  # --verbose: the library's lines on the console too
    logging.getLogger("megatron.core").debug("a debug dump")
    assert "a debug dump" in capsys.readouterr().out


def test_while_a_command_works_fd2_goes_to_the_log(tmp_path, capfd, run_logging):
    """What C/C++ code and helper processes write to fd 2 lands in the run's log; the project's warnings keep
    the real stderr, its INFO lines stdout; after the block (a refusal leaves it), fd 2 is the console again."""
    import logging
    import os
    import subprocess

    from red_megatron.console import library_output_to_log
    from red_megatron.metrics import setup_run_logging

    path = setup_run_logging(tmp_path)
    log = logging.getLogger("red_megatron.trainer")
    with pytest.raises(ValueError), library_output_to_log(path):
        os.write(2, b"W1206 utils.cpp:68] Warning: NUMA binding\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a helper process says hi\\n')"])
        log.info("old-policy pass skipped")
        log.warning("a warning shows at once")
        raise ValueError("a refusal")
    os.write(2, b"fd 2 is the console again\n")
    out, err = capfd.readouterr()
    assert "old-policy pass skipped" in out and "old-policy" not in err
    assert "a warning shows at once" in err and "fd 2 is the console again" in err
    assert "NUMA" not in out + err and "helper process" not in out + err
    text = path.read_text()
    assert "NUMA binding" in text and "a helper process says hi" in text and "old-policy pass skipped" in text


def test_each_rank_gets_its_own_vllm_logging_config(tmp_path, monkeypatch, run_logging):
    """Ranks of one run share run_dir/logs: one shared config file, rewritten by each rank with its own log's
    name, was read half-overwritten by vLLM on the other rank (CI 2026-12-02, tp2_infer2: "Extra data")."""
    import os

    from red_megatron.metrics import setup_run_logging

    seen = {}
    for rank in (0, 1):
        monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)
        log = setup_run_logging(tmp_path, rank=rank)
        cfg_path = Path(os.environ["VLLM_LOGGING_CONFIG_PATH"])
        seen[rank] = cfg_path
        assert json.loads(cfg_path.read_text())["handlers"]["file"]["filename"] == str(log.resolve())
    assert seen[0] != seen[1]
    assert json.loads(seen[0].read_text())["handlers"]["file"]["filename"].endswith("library.log")
    assert not list((tmp_path / "logs").glob("*.tmp*"))  # written whole, then renamed


def test_plot_axes_are_labelled_and_legends_do_not_cover_the_data(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))  # keep the figures to inspect
    _fake_run(tmp_path)
    plot_run(tmp_path)
    assert len(figs) == 3
    for fig in figs:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            xlabel = ax.get_xlabel() or any(a.get_xlabel() for a in ax.get_shared_x_axes().get_siblings(ax))  # twinx
            assert xlabel and ax.get_ylabel(), (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
            leg = ax.get_legend()
            if leg is None:
                continue
            box, area = leg.get_window_extent(renderer), ax.get_window_extent(renderer)
            assert box.y1 <= area.y0, f"legend of {ax.get_title()!r} overlaps its axes"



def test_terminal_bar_shows_the_same_keys(tmp_path):
    import io

    from red_megatron.metrics import PROGRESS_KEYS

    out = io.StringIO()
    logger = MetricsLogger(tmp_path, MetricsConfig(tensorboard=False), total_steps=2, tty=True, stream=out)
    assert logger._progress is not None
    for s in (1, 2):
        logger.log(s, {key: 0.25 for key, _, _ in PROGRESS_KEYS})
    logger.close()
    text = out.getvalue()
    for _, label, _ in PROGRESS_KEYS:
        assert f"{label}=" in text, (label, text[-500:])
    assert "2/2" in text and "ETA" in text


def test_terminal_bar_keeps_step_and_times_at_80_columns(tmp_path):
    import io
    import re

    from red_megatron.metrics import PROGRESS_KEYS

    out = io.StringIO()
    logger = MetricsLogger(tmp_path, MetricsConfig(tensorboard=False), total_steps=200, tty=True, stream=out, width=80)
    logger.log(30, {key: 0.25 for key, _, _ in PROGRESS_KEYS})
    logger.close()
    last = out.getvalue().replace("\x1b[2K", "").split("\r")[-1].splitlines()[0]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last)
    assert len(plain) <= 80 and re.search(r"30/200 \d+:\d\d:\d\d ETA ", plain), plain
    assert "reward=0.250" in plain and plain.endswith("…"), plain  # the metrics give way, first ones kept
