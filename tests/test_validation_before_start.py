"""Validation before anything starts (issue 29): what ``--check`` passed and the run then refused (or
trained on): non-finite floats, negative seeds, ``algo.tis_cap < 1``, a hidden size the heads do not
divide, a tokenizer with ids beyond config.json's vocab_size. One validator serves both: each case is
refused by ``red-train --check`` with one line and exit 2."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bad_inputs import _env, assert_refused, run_main

REPO = Path(__file__).resolve().parents[1]

CASES = [
    (["policy.lr=inf"], ["non-finite value in policy.lr=inf", "expected a finite number"]),
    (["algo.temperature=inf"], ["non-finite value in algo.temperature=inf"]),
    (["algo.temperature=nan"], ["temperature", "nan"]),  # NaN fails the section's own range check first
    (["algo.tis_cap=inf"], ["non-finite value in algo.tis_cap=inf"]),
    (["policy.clip_grad=nan"], ["clip_grad", "nan"]),
    (["algo.tis_cap=0.5"], ["algo.tis_cap must be >= 1"]),
    (["seed=-1"], ["negative seed in seed=-1", "expected an int >= 0"]),
]


@pytest.mark.parametrize("extra,expected", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_check_refuses(tiny_ckpt_dir, extra, expected):
    rc, out, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--check", *extra])
    assert_refused(rc, err, *expected)
    assert out == ""


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_hidden_size_the_heads_do_not_divide(tmp_path, tiny_ckpt_dir):
    d = tmp_path / "model"
    shutil.copytree(tiny_ckpt_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("head_dim", None)
    cfg["hidden_size"] = cfg["num_attention_heads"] * 8 + 1
    (d / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={d}", "--check"])
    assert_refused(rc, err, "unsupported model in", str(d / "config.json"), "must be divisible by num_attention_heads")


def test_tokenizer_ids_beyond_vocab_size_name_both_files(tmp_path, tiny_ckpt_dir):
    d = tmp_path / "model"
    shutil.copytree(tiny_ckpt_dir, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    top = max(list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])])
    _edit_config(d, vocab_size=top)  # one id too few
    rc, _, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={d}", "--check"])
    assert_refused(rc, err, "tokenizer ids beyond the model's vocabulary in", str(d), f"token id {top}",
                   f"config.json has vocab_size={top}")
    _edit_config(d, vocab_size=top + 1)
    rc, out, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={d}", "--check"])
    assert rc == 0 and out.startswith("check OK"), err


def test_infinite_lr_is_refused_before_the_run_starts(tmp_path, tiny_ckpt_dir):
    """The issue's case as a real subprocess without --check: it trained to exit 0 and exported NaN."""
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu",
                        f"model_dir={tiny_ckpt_dir}", "--run-dir", str(run), "steps=1", "policy.lr=inf"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr == "error: non-finite value in policy.lr=inf: expected a finite number\n", p.stderr[-2000:]
    assert not (run / "hf").exists() and not (run / "checkpoints").exists()


def _trace_rows(path: Path, traces: list[str]) -> None:
    rows = [{"data_source": "t", "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
             "reward_model": {"ground_truth": str(i + 1)}, "target": [{"role": "assistant", "content": t}]}
            for i, t in enumerate(traces)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_traces_are_reported_and_refused_past_the_threshold(tmp_path, tiny_ckpt_dir):
    from red_megatron.data.dataset import DataConfig, RedDataset
    from red_megatron.data.records import DataError
    from red_megatron.data.chat import load_tokenizer

    # rows 0-5 right (the gold, another form of it), 6-7 without a box, 8 the wrong answer, 9 \boxed{2}: right
    traces = [f"So \\boxed{{{i + 1}}}." for i in range(5)] + ["So \\boxed{6.0}.", "It is 7.", "It is 8",
                                                              "So \\boxed{10}.", "So \\boxed{\\frac{20}{2}}."]
    path = tmp_path / "d.jsonl"
    _trace_rows(path, traces)
    tok = load_tokenizer(str(tiny_ckpt_dir))
    ds = RedDataset.load(DataConfig(path=str(path), max_bad_trace_fraction=0.3), tok)
    q = ds.stats.trace_quality
    assert (q.traces, q.no_answer_rows, q.wrong_answer_rows) == (10, [6, 7], [8])
    with pytest.raises(DataError, match=r"d.jsonl: 2 of 10 offline traces have no \\boxed\{\} final answer "
                                        r"\(first rows \[6, 7\]\) and 1 box an answer that is not the gold "
                                        r"\(first rows \[8\]\): 30.0% bad, over data.max_bad_trace_fraction=0.2"):
        RedDataset.load(DataConfig(path=str(path), max_bad_trace_fraction=0.2), tok)
    with pytest.raises(ValueError, match="max_bad_trace_fraction"):
        DataConfig(path=str(path), max_bad_trace_fraction=1.5)


def test_a_refusal_after_start_up_is_one_line(tmp_path, tiny_ckpt_dir):
    """The run's data is read after the logging is set up: its refusal is still the only stderr line
    (the run used to print an INFO line about the library log first)."""
    path = tmp_path / "traces.jsonl"
    _trace_rows(path, ["So \\boxed{1}."] + ["No box here."] * 3)
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "red_megatron.cli.train", "--recipe", "tiny_cpu",
                        f"model_dir={tiny_ckpt_dir}", "--run-dir", str(run), "steps=1", f"data.path={path}",
                        "data.max_bad_trace_fraction=0.5"], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr[-2000:]
    assert "3 of 4 offline traces have no \\boxed{} final answer (first rows [1, 2, 3])" in p.stderr
    assert "library logs and warnings" in (run / "logs" / "library.log").read_text()
