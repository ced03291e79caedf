"""scripts/prepare_data.py / red_megatron.data.prepare: public datasets -> the project's openr1 schema,
tested on the benchmark copy found through RED_SHARED_DATA; the hub path fails with a clear message."""
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from red_megatron.data.dataset import DataConfig, read_records
from red_megatron.data.prepare import PrepareConfig, prepare
from red_megatron.data.records import DataError
from tests.conftest import shared_data_dir

REPO = Path(__file__).resolve().parents[1]


def test_openr1_copy_is_kept_and_reads_back(tmp_path):
    src = shared_data_dir() / "math_eval.parquet"
    out = tmp_path / "eval.parquet"
    stats = prepare(PrepareConfig(source=str(src), out=str(out), limit=50))
    assert stats["rows"] == 50 and stats["with_trace"] == 0
    want = pq.read_table(src).slice(0, 50).to_pylist()
    recs = read_records(DataConfig(path=str(out), require_trace=False))
    assert [r.gold for r in recs] == [w["reward_model"]["ground_truth"] for w in want]
    assert [r.messages for r in recs] == [w["prompt"] for w in want]  # its own system turn is kept
    assert sum(stats["data_sources"].values()) == 50
    assert not list(tmp_path.glob(".*partial*"))


def test_problem_answer_rows_from_the_copy_become_the_schema(tmp_path):
    """The benchmark rows written as plain question/answer/solution JSONL (a typical public layout) come back
    as the same questions and gold answers, with the solution as the offline trace."""
    src = shared_data_dir() / "math_eval.parquet"
    rows = pq.read_table(src).slice(0, 20).to_pylist()
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"question": r["prompt"][-1]["content"],
                                       "final_answer": r["reward_model"]["ground_truth"],
                                       "solution": f"... so \\boxed{{{r['reward_model']['ground_truth']}}}"}) + "\n"
                           for r in rows))
    out = tmp_path / "train.jsonl"
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--source", str(raw), "--out",
                        str(out), "--system-prompt", "Think.", "--data-source", "bench"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == 20 and json.loads(p.stdout)["with_trace"] == 20
    recs = read_records(DataConfig(path=str(out)))
    assert [r.messages for r in recs] == [[{"role": "system", "content": "Think."},
                                           {"role": "user", "content": r["prompt"][-1]["content"]}] for r in rows]
    assert [r.gold for r in recs] == [r["reward_model"]["ground_truth"] for r in rows]
    assert recs[0].trace.endswith("\\boxed{" + rows[0]["reward_model"]["ground_truth"] + "}")
    assert {r.data_source for r in recs} == {"bench"}


def test_bad_rows_and_hub_names_fail_clearly(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n" + json.dumps({"text": "no fields"}) + "\n")
    with pytest.raises(DataError, match=r"raw.jsonl row 1 \(line 2\): no question field"):
        prepare(PrepareConfig(source=str(raw), out=str(tmp_path / "o.parquet")))
    assert not (tmp_path / "o.parquet").exists()
    with pytest.raises(ValueError, match="--out"):
        PrepareConfig(source=str(raw), out=str(tmp_path / "o.csv"))
    # no hub here: a name (not a file) fails naming what to do instead
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--source",
                        "Elliott/Openr1-Math-46k-8192", "--out", str(tmp_path / "t.parquet")],
                       capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                         "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "Elliott/Openr1-Math-46k-8192" in p.stderr and "download a copy and pass its" in p.stderr
