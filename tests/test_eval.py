"""Evaluation: the paper's protocol on a slice of math_eval.parquet with a scripted generator.

The fake generator knows which selected row it is answering (the protocol gives the call for
rows [lo, lo+B) the seed ``cfg.seed + lo``, so row = seed - cfg.seed + i) and answers the gold
for the rows a test plan marks correct, a wrong number otherwise, with a response length
the plan also fixes. Expected accuracies are then worked out from the plan by hand.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from red_megatron.data.chat import load_tokenizer
from red_megatron.data.dataset import DataConfig, RedDataset
from red_megatron.eval import EvalConfig, evaluate, markdown_table, result_record, run_eval, select_rows
from red_megatron.reward import RewardConfig, RewardScorer

REPO = Path(__file__).resolve().parents[1]
# the benchmarks' data, found as tests/conftest.py's shared_data_dir() does (a module-level mark needs the path)
EVAL_PARQUET = Path(__import__("os").environ.get("RED_SHARED_DATA", REPO.parent / "shared" / "data")) / "math_eval.parquet"
needs_parquet = pytest.mark.skipif(not EVAL_PARQUET.exists(),
                                   reason=f"{EVAL_PARQUET} absent; set RED_SHARED_DATA to the directory holding it")


@pytest.fixture(scope="module")
def tok(tiny_ckpt_dir):
    return load_tokenizer(tiny_ckpt_dir)


@pytest.fixture(scope="module")
def eval_ds(tok, tmp_path_factory):
    """The first 64 rows of each benchmark (two whole AIME/AMC problems with their 32 repeats)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(EVAL_PARQUET)
    parts = []
    for src in pc.unique(t.column("data_source")).to_pylist():
        parts.append(t.filter(pc.equal(t.column("data_source"), src)).slice(0, 64))
    path = tmp_path_factory.mktemp("eval") / "math_eval_slice.parquet"
    pq.write_table(pa.concat_tables(parts), path)
    cfg = DataConfig(path=str(path), require_trace=False, max_prompt_tokens=100_000, answer_check="off",
                     global_batch_size=1, shuffle=False)
    return RedDataset.load(cfg, tok)


@pytest.fixture(scope="module")
def scorer():
    s = RewardScorer(RewardConfig(num_workers=1, timeout_s=10.0))
    yield s
    s.close()


class ScriptedGenerator:
    """Answers row r (position in the selection) correctly iff plan_correct(r); length plan_len(r) tokens."""

    def __init__(self, ds, cfg, correct, length):
        self.rows, _ = select_rows(ds, cfg)
        self.ds, self.cfg, self.correct, self.length = ds, cfg, correct, length
        self.calls = []

    def __call__(self, prompts, temperature, max_tokens, seed):
        self.calls.append((len(prompts), temperature, max_tokens, seed))
        out = []
        for i, p in enumerate(prompts):
            r = seed - self.cfg.seed + i
            idx = self.rows[r]
            assert p == self.ds.prompt_ids(idx)  # the prompt really is row r's
            gold = self.ds.records[idx].gold
            text = f"Thinking... so the answer is \\boxed{{{gold}}}." if self.correct(r) else "\\boxed{-987654}"
            out.append((list(range(self.length(r))), text))
        return out


@needs_parquet
def test_selection_keeps_repeats_together(eval_ds):
    cfg = EvalConfig(per_source_limit=2, max_repeats=3)
    rows, pids = select_rows(eval_ds, cfg)
    by_source = {}
    for i, pid in zip(rows, pids):
        by_source.setdefault(eval_ds.records[i].data_source, {}).setdefault(pid, []).append(i)
    assert sorted(by_source) == ["aime", "aime25", "amc", "math", "minerva", "olympiad_bench"]
    for src, probs in by_source.items():
        assert len(probs) == 2  # two unique problems per benchmark
        k = 3 if src in ("aime", "aime25", "amc") else 1  # AIME/AMC rows are repeated (32x in the file)
        assert all(len(v) == k for v in probs.values()), (src, probs)
        for v in probs.values():  # a problem's rows share the prompt and gold
            assert len({tuple(eval_ds.prompt_ids(i)) for i in v}) == 1
            assert len({eval_ds.records[i].gold for i in v}) == 1
    _, pids = select_rows(eval_ds, EvalConfig(limit=3))
    assert len(set(pids)) == 3
    full, _ = select_rows(eval_ds, EvalConfig(per_source_limit=1))
    assert len(full) == 32 * 3 + 3  # all 32 repeats of one AIME24/AIME25/AMC problem, one row of the others


@needs_parquet
def test_accuracy_and_len_per_benchmark_and_overall(eval_ds, scorer):
    cfg = EvalConfig(per_source_limit=2, max_repeats=3, batch_size=5, seed=100, max_tokens=64)
    rows, _ = select_rows(eval_ds, cfg)
    # the plan is per benchmark, in the order its rows are selected, so it does not depend on file order
    bench = [eval_ds.records[i].data_source for i in rows]
    plan = {  # data_source -> which of its rows (in order) are answered correctly
        "aime": [1, 1, 0, 0, 0, 0],  # problem A: 2/3, problem B: 0/3 -> (2/3 + 0)/2 = 33.33
        "aime25": [1, 1, 1, 1, 0, 1],  # 3/3 and 2/3 -> 83.33
        "amc": [0, 0, 0, 0, 0, 0],  # 0
        "math": [1, 0],  # 50
        "minerva": [1, 1],  # 100
        "olympiad_bench": [0, 1],  # 50
    }
    expected = {"AIME24": 100 / 3, "AIME25": 250 / 3, "AMC": 0.0, "MATH-500": 50.0, "Minerva": 100.0,
                "Olympiad": 50.0}
    seen = {}
    correct = []
    for b in bench:
        correct.append(bool(plan[b][seen.get(b, 0)]))
        seen[b] = seen.get(b, 0) + 1
    gen = ScriptedGenerator(eval_ds, cfg, correct=lambda r: correct[r], length=lambda r: 10 + r)
    res = evaluate(eval_ds, gen, scorer, cfg)
    assert [c[0] for c in gen.calls] == [5, 5, 5, 5, 4]  # 24 rows in batches of 5
    assert all(c[1] == 0.6 and c[2] == 64 for c in gen.calls)  # the paper's T=0.6
    assert list(res.benchmarks) == ["AIME24", "AIME25", "AMC", "MATH-500", "Minerva", "Olympiad"]
    for name, acc in expected.items():
        assert res.benchmarks[name].acc == pytest.approx(acc), name
    assert res.acc == pytest.approx(sum(expected.values()) / 6)  # "Avg." = mean of the six
    assert res.acc_micro == pytest.approx(100 * sum(correct) / len(correct))
    lens = {}
    for r, b in enumerate(bench):
        lens.setdefault(b, []).append(10 + r)
    alias = {"aime": "AIME24", "aime25": "AIME25", "amc": "AMC", "math": "MATH-500", "minerva": "Minerva",
             "olympiad_bench": "Olympiad"}
    for src, ls in lens.items():
        assert res.benchmarks[alias[src]].len == pytest.approx(sum(ls) / len(ls))
    assert res.len == pytest.approx(sum(sum(v) / len(v) for v in lens.values()) / 6)
    assert res.len_micro == pytest.approx(sum(10 + r for r in range(len(rows))) / len(rows))
    b = res.benchmarks["AIME24"]
    assert (b.protocol, b.paper_protocol, b.n_problems, b.n_samples) == ("avg@3", "avg@32", 2, 6)
    assert res.benchmarks["MATH-500"].protocol == "pass@1"
    assert res.reward_stats["correct"] == sum(correct) and res.reward_stats["total"] == len(rows)
    assert len(res.samples) == len(rows) and res.samples[0]["response"]


@needs_parquet
def test_avg_is_per_problem_when_repeats_are_unequal(eval_ds, scorer, tmp_path):
    # problem X has 3 rows (all right), problem Y 1 row (wrong): avg@k gives 50, a row mean would give 75
    rows = [{"data_source": "aime", "prompt": [{"role": "user", "content": "X?"}],
             "reward_model": {"ground_truth": "7"}}] * 3 + \
           [{"data_source": "aime", "prompt": [{"role": "user", "content": "Y?"}],
             "reward_model": {"ground_truth": "8"}}]
    path = tmp_path / "uneq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = RedDataset.load(DataConfig(path=str(path), require_trace=False, global_batch_size=1), eval_ds.tokenizer)
    cfg = EvalConfig()
    res = evaluate(ds, ScriptedGenerator(ds, cfg, correct=lambda r: r < 3, length=lambda r: 5), scorer, cfg)
    assert res.benchmarks["AIME24"].acc == pytest.approx(50.0)
    assert res.acc_micro == pytest.approx(75.0)
    assert res.benchmarks["AIME24"].protocol == "avg@1-3"


def test_problem_answer_jsonl_with_unknown_source(tok, scorer, tmp_path):
    path = tmp_path / "mybench.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": i + 1}) + "\n" for i in range(4)))
    ds = RedDataset.load(DataConfig(path=str(path), schema="problem_answer", problem_key="question",
                                    require_trace=False, global_batch_size=1), tok)
    cfg = EvalConfig(temperature=0.0)
    res, table = run_eval(name="fake", dataset=ds, scorer=scorer, cfg=cfg, out_dir=tmp_path / "out",
                          generate_fn=ScriptedGenerator(ds, cfg, correct=lambda r: r != 1, length=lambda r: 3))
    assert list(res.benchmarks) == ["mybench"] and res.acc == pytest.approx(75.0)
    assert table.splitlines()[0] == "| Model | mybench | Avg. | LEN |"
    assert table.splitlines()[2] == "| fake | 75.00 | 75.00 | 3 |"
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["name"] == "fake" and saved["benchmarks"]["mybench"]["acc"] == pytest.approx(75.0)
    assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 4
    assert (tmp_path / "out" / "table.md").read_text().startswith(table)


def test_markdown_table_shape_with_several_rows():
    def rec(name, accs, avg, length):
        return {"name": name, "acc": avg, "len": length,
                "benchmarks": {k: {"acc": v} for k, v in accs.items()}}

    table = markdown_table([
        rec("GRPO", {"MATH-500": 70.0, "AIME24": 10.123, "Minerva": 30.0}, 36.71, 1759.4),
        rec("RED", {"AIME24": 15.0, "AIME25": 12.5, "AMC": 50.0, "MATH-500": 75.0, "Minerva": 33.3,
                    "Olympiad": 40.0}, 41.6, 2506.0),
    ])
    lines = table.strip().splitlines()
    assert lines[0] == "| Model | AIME24 | AIME25 | AMC | MATH-500 | Minerva | Olympiad | Avg. | LEN |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| GRPO | 10.12 | – | – | 70.00 | 30.00 | – | 36.71 | 1759 |"
    assert lines[3] == "| RED | 15.00 | 12.50 | 50.00 | 75.00 | 33.30 | 40.00 | 41.60 | 2506 |"


def test_generator_returning_wrong_count_is_an_error(tok, scorer, tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    ds = RedDataset.load(DataConfig(path=str(path), schema="problem_answer", require_trace=False,
                                    global_batch_size=1), tok)
    with pytest.raises(RuntimeError, match="returned 0 responses for 1 prompts"):
        evaluate(ds, lambda p, t, m, s: [], scorer, EvalConfig())


@pytest.mark.parametrize("kw,field", [({"temperature": -1}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                                      ({"limit": 0}, "limit"), ({"per_source_limit": 0}, "per_source_limit"),
                                      ({"max_repeats": 0}, "max_repeats"), ({"seed": -1}, "seed")])
def test_eval_config_validation(kw, field):
    with pytest.raises(ValueError, match=f"EvalConfig.{field}"):
        EvalConfig(**kw)


def test_result_record_round_trips_into_a_table(tok, scorer, tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2", "data_source": "math"}) + "\n")
    ds = RedDataset.load(DataConfig(path=str(path), schema="problem_answer", require_trace=False,
                                    global_batch_size=1), tok)
    cfg = EvalConfig()
    res = evaluate(ds, ScriptedGenerator(ds, cfg, correct=lambda r: True, length=lambda r: 9), scorer, cfg)
    rec = json.loads(json.dumps(result_record("m", res)))
    assert markdown_table([rec]).splitlines()[2] == "| m | 100.00 | 100.00 | 9 |"


@pytest.mark.vllm
@pytest.mark.slow
@needs_parquet
def test_eval_script_end_to_end_on_tiny_checkpoint(tiny_ckpt_dir, tmp_path):
    """scripts/eval.py with the real vLLM engine: a random model scores ~0, but the table comes out."""
    out = tmp_path / "eval"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "eval.py"), "--model", str(tiny_ckpt_dir), "--name", "tiny",
         f"eval.data_path={EVAL_PARQUET}", "--out", str(out), "eval.protocol.per_source_limit=1",
         "eval.protocol.max_repeats=2", "eval.protocol.max_tokens=8", "reward.num_workers=1"],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["benchmarks"]) == ["AIME24", "AIME25", "AMC", "MATH-500", "Minerva", "Olympiad"]
    assert res["benchmarks"]["AIME24"]["n_samples"] == 2 and res["benchmarks"]["Minerva"]["n_samples"] == 1
    assert 0 < res["len"] <= 8 and 0.0 <= res["acc"] <= 100.0
    assert res["reward_stats"]["total"] == 9
    table = (out / "table.md").read_text()
    assert "| Model | AIME24 | AIME25 | AMC | MATH-500 | Minerva | Olympiad | Avg. | LEN |" in table
    assert "| tiny |" in proc.stdout
    assert len((out / "samples.jsonl").read_text().splitlines()) == 9


def test_samples_per_row_gives_avg_at_k_without_repeated_rows(tok, scorer, tmp_path):
    path = tmp_path / "aime_plain.jsonl"
    path.write_text("".join(json.dumps({"problem": f"{i}*2?", "answer": 2 * i, "data_source": "aime25"}) + "\n"
                            for i in range(1, 3)))
    ds = RedDataset.load(DataConfig(path=str(path), schema="problem_answer", require_trace=False,
                                    global_batch_size=1), tok)
    cfg = EvalConfig(samples_per_row=4, batch_size=3)
    gen = ScriptedGenerator(ds, cfg, correct=lambda r: r in (0, 1, 2, 4), length=lambda r: 1)
    res = evaluate(ds, gen, scorer, cfg)
    # problem 1: 3 of 4, problem 2: 1 of 4 -> avg@4 = 50; every call saw distinct seeds
    assert res.benchmarks["AIME25"].acc == pytest.approx(50.0)
    assert res.benchmarks["AIME25"].protocol == "avg@4" and res.benchmarks["AIME25"].n_problems == 2
    assert [c[3] for c in gen.calls] == [0, 3, 6]
