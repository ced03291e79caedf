"""Data: schema variants, chat template, length limits, trace truncation, and one clear error per bad input."""
import json
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from red_megatron.data.chat import load_tokenizer
from red_megatron.data.dataset import DataConfig, RedDataset
from red_megatron.data.records import DataError

TRACE = "First, 2 + 3 = 5. Checking: 5 - 3 = 2. So the answer is \\boxed{5}."


@pytest.fixture(scope="module")
def tok(tiny_ckpt_dir):
    return load_tokenizer(tiny_ckpt_dir)


def row(i=0, **over):
    r = {"data_source": "synthetic",
         "prompt": [{"role": "user", "content": f"What is 2 + {i}?"}],
         "target": [{"role": "assistant", "content": TRACE}],
         "reward_model": {"ground_truth": str(2 + i), "style": "rule"}}
    r.update(over)
    return r


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def load(path, tok, **kw):
    kw.setdefault("global_batch_size", 1)
    return RedDataset.load(DataConfig(path=str(path), **kw), tok)


def test_openr1_parquet_prompt_trace_and_gold(tmp_path, tok):
    ds = load(write_parquet(tmp_path / "d.parquet", [row(i) for i in range(4)]), tok)
    assert len(ds) == 4
    ex = ds[2]
    assert (ex.row, ex.gold, ex.data_source) == (2, "4", "synthetic")
    text = tok.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")  # the generation prompt is there
    assert ex.prompt_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ex.trace_ids == tok(TRACE, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert ex.trace_truncated is False
    assert ds[-1].row == 3


@pytest.mark.parametrize("target", [[TRACE], TRACE, [{"role": "assistant", "content": TRACE}]])
def test_target_forms_give_the_same_trace(tmp_path, tok, target):
    ds = load(write_jsonl(tmp_path / "d.jsonl", [row(0, target=target)]), tok)
    assert tok.decode(ds[0].trace_ids[:-1]) == TRACE
    assert ds[0].trace_ids[-1] == ds.eos_id


def test_flattened_ground_truth_column(tmp_path, tok):
    rows = [row(i) for i in range(3)]
    for r in rows:
        r["reward_model.ground_truth"] = r.pop("reward_model")["ground_truth"]
    path = write_parquet(tmp_path / "flat.parquet", rows)
    assert "reward_model.ground_truth" in pq.read_schema(path).names
    assert [e.gold for e in (load(path, tok)[i] for i in range(3))] == ["2", "3", "4"]


def test_integer_gold_is_accepted(tmp_path, tok):
    ds = load(write_jsonl(tmp_path / "d.jsonl", [row(0, reward_model={"ground_truth": 12})]), tok)
    assert ds[0].gold == "12"


def test_trace_truncated_at_response_limit_with_eos_and_counted(tmp_path, tok):
    long_trace = " ".join(["step"] * 200) + " \\boxed{5}"
    rows = [row(0, target=[long_trace]), row(1)]
    n_long = len(tok(long_trace, add_special_tokens=False)["input_ids"])
    n_short = len(tok(TRACE, add_special_tokens=False)["input_ids"])
    limit = n_short + 1  # the short trace plus EOS fits exactly
    assert n_long + 1 > limit
    ds = load(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_response_tokens=limit)
    a, b = ds[0], ds[1]
    assert len(a.trace_ids) == limit and a.trace_ids[-1] == ds.eos_id and a.trace_truncated
    assert a.trace_ids[:-1] == tok(long_trace, add_special_tokens=False)["input_ids"][:limit - 1]
    assert len(b.trace_ids) == limit and not b.trace_truncated
    assert ds.count_truncated_traces() == 1


def test_problem_answer_schema_with_template(tmp_path, tok):
    rows = [{"problem": "What is 1+1?", "answer": "2", "solution": "1+1=2, \\boxed{2}"},
            {"problem": "What is 2+2?", "answer": 4, "solution": "\\boxed{4}"}]
    cfg = dict(schema="problem_answer", prompt_template="{problem} Put the answer in \\boxed{}.",
               system_prompt="Be brief.")
    ds = load(write_jsonl(tmp_path / "pa.jsonl", rows), tok, **cfg)
    ex = ds[1]
    assert ex.messages == [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "What is 2+2? Put the answer in \\boxed{}."}]
    assert ex.gold == "4" and ex.data_source == "pa"  # no data_source field: the file's name
    assert tok.decode(ex.trace_ids[:-1]) == "\\boxed{4}"
    # evaluation files have no solution: require_trace=False, custom field names
    rows = [{"question": "q1", "final": "7"}]
    ds = load(write_jsonl(tmp_path / "e.jsonl", rows), tok, schema="problem_answer", problem_key="question",
              answer_key="final", require_trace=False)
    assert ds[0].trace_ids is None and ds[0].gold == "7"


def test_too_long_prompt_error_names_the_row(tmp_path, tok):
    rows = [row(0), row(1, prompt=[{"role": "user", "content": "long " * 300}]), row(2)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d.jsonl row 1 \(line 2\).*max_prompt_tokens=64"):
        load(path, tok, max_prompt_tokens=64)


def test_too_long_prompt_drop_policy_counts_and_warns(tmp_path, tok):
    rows = [row(0), row(1, prompt=[{"role": "user", "content": "long " * 300}]), row(2)]
    with pytest.warns(UserWarning, match="dropped 1 of 3"):
        ds = load(write_jsonl(tmp_path / "d.jsonl", rows), tok, max_prompt_tokens=64, too_long_prompt="drop")
    assert len(ds) == 2 and [ds[i].row for i in range(2)] == [0, 2]
    assert ds.stats.prompts_dropped_too_long == 1 and ds.stats.dropped_rows == [1]


@pytest.mark.parametrize("over,match", [
    ({"prompt": None}, r"row 1 \(line 2\): missing field 'prompt'"),
    ({"prompt": "What is 2+2?"}, r"row 1 \(line 2\): field 'prompt' must be a non-empty list"),
    ({"prompt": []}, r"row 1 \(line 2\): field 'prompt' must be a non-empty list"),
    ({"prompt": [{"role": "user"}]}, r"row 1 .*field 'prompt'\[0\] must be a dict with str 'role' and 'content'"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, r"row 1 .*'prompt'\[0\].role must be one of"),
    ({"target": None}, r"row 1 .*missing field 'target'"),
    ({"target": []}, r"row 1 .*field 'target' is an empty list"),
    ({"target": ["   "]}, r"row 1 .*field 'target' is an empty trace"),
    ({"target": [{"role": "assistant", "content": ""}]}, r"row 1 .*field 'target' is an empty trace"),
    ({"target": [3]}, r"row 1 .*field 'target' must hold trace text, got int"),
    ({"reward_model": {"style": "rule"}}, r"row 1 .*missing field 'reward_model.ground_truth'"),
    ({"reward_model": {"ground_truth": ["5"]}}, r"row 1 .*'reward_model.ground_truth' must be a str or a number, got list"),
    ({"reward_model": {"ground_truth": True}}, r"row 1 .*'reward_model.ground_truth' must be a str or a number, got bool"),
    ({"reward_model": {"ground_truth": " "}}, r"row 1 .*'reward_model.ground_truth' is an empty gold answer"),
    ({"reward_model": {"ground_truth": "\\frac{"}}, r"row 1 .*gold answer '\\\\frac\{' cannot be parsed by math-verify"),
    ({"data_source": 5}, r"row 1 .*field 'data_source' must be a non-empty str"),
])
def test_bad_rows_raise_one_clear_error(tmp_path, tok, over, match):
    bad = row(1, **over)
    if over.get("prompt", 0) is None:
        del bad["prompt"]
    path = write_jsonl(tmp_path / "bad.jsonl", [row(0), bad, row(2)])
    with pytest.raises(DataError, match=match):
        load(path, tok)


def test_bad_row_in_parquet_names_row(tmp_path, tok):
    rows = [row(0), row(1), row(2, target=[{"role": "assistant", "content": ""}])]
    with pytest.raises(DataError, match=r"bad.parquet row 2: field 'target' is an empty trace"):
        load(write_parquet(tmp_path / "bad.parquet", rows), tok)


def test_unparseable_answer_warn_policy_keeps_the_row(tmp_path, tok):
    rows = [row(0), row(1, reward_model={"ground_truth": "}{"})]
    with pytest.warns(UserWarning, match="1 gold answers math-verify cannot parse"):
        ds = load(write_jsonl(tmp_path / "d.jsonl", rows), tok, answer_check="warn")
    assert len(ds) == 2 and ds.stats.unparseable_answer_rows == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load(write_jsonl(tmp_path / "d.jsonl", rows), tok, answer_check="off")) == 2


def test_file_level_errors(tmp_path, tok):
    p = tmp_path / "broken.jsonl"
    p.write_text(json.dumps(row(0)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl line 2: not valid JSON"):
        load(p, tok)
    p.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list"):
        load(p, tok)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load(tmp_path / "nope.jsonl", tok)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported data file type '.csv'"):
        load(tmp_path / "d.csv", tok)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load(tmp_path / "empty.jsonl", tok)


def test_tokenizer_without_chat_template(tmp_path, tok):
    import copy
    t2 = copy.deepcopy(tok)
    t2.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        load(write_jsonl(tmp_path / "d.jsonl", [row(0)]), t2)
    ds = load(write_jsonl(tmp_path / "d.jsonl", [row(0)]), t2,
              chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}A:")
    assert tok.decode(ds[0].prompt_ids) == "What is 2 + 0?\nA:"


@pytest.mark.parametrize("kw,field", [
    ({"schema": "csv"}, "schema"), ({"too_long_prompt": "truncate"}, "too_long_prompt"),
    ({"max_prompt_tokens": 0}, "max_prompt_tokens"), ({"max_response_tokens": 1}, "max_response_tokens"),
    ({"global_batch_size": 0}, "global_batch_size"), ({"limit": 0}, "limit"), ({"seed": -1}, "seed"),
    ({"answer_check": "maybe"}, "answer_check"), ({"prompt_template": "no placeholder"}, "prompt_template"),
])
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=f"DataConfig.{field}"):
        DataConfig(path="x.parquet", **kw)


def test_reads_the_shared_eval_parquet(tok):
    from tests.conftest import shared_data_dir

    EVAL_PARQUET = shared_data_dir() / "math_eval.parquet"
    ds = load(EVAL_PARQUET, tok, require_trace=False, limit=40, max_prompt_tokens=100_000,
              answer_check="off")
    assert len(ds) == 40
    t = pq.read_table(EVAL_PARQUET).slice(0, 40).to_pylist()
    assert [ds[i].gold for i in range(40)] == [r["reward_model"]["ground_truth"] for r in t]
    assert [ds[i].data_source for i in range(40)] == [r["data_source"] for r in t]
    assert ds[0].messages[0]["role"] == "system" and ds[0].trace_ids is None


def test_answer_check_in_worker_processes(tmp_path, tok):
    rows = [row(0), row(1, reward_model={"ground_truth": "\\frac{3}{4}"}), row(2, reward_model={"ground_truth": "}{"})]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2 \(line 3\): the gold answer '\}\{' cannot be parsed"):
        load(path, tok, answer_check_workers=1)
    with pytest.warns(UserWarning, match="1 gold answers"):
        ds = load(path, tok, answer_check_workers=1, answer_check="warn")
    assert ds.stats.unparseable_answer_rows == [2]


def test_synthetic_task_parquet_loads_and_its_traces_verify(tmp_path, tok):
    from red_megatron.study.tasks.synthetic import SyntheticTaskConfig, write_parquet
    from red_megatron.reward import extract_boxed, verify_answer

    path = write_parquet(SyntheticTaskConfig(difficulty="medium", num_examples=12, seed=3), tmp_path / "syn.parquet")
    ds = load(path, tok, max_response_tokens=4096)
    assert len(ds) == 12
    for i in range(len(ds)):
        ex = ds[i]
        assert ex.trace_ids[-1] == ds.eos_id and not ex.trace_truncated
        trace = tok.decode(ex.trace_ids[:-1])
        assert verify_answer(extract_boxed(trace), ex.gold)[0], (trace, ex.gold)  # the teacher is right
