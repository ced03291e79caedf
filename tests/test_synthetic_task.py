"""The built-in verifiable task: deterministic, every answer and every trace step correct, LUFFY schema."""
import ast
import operator
import re
from fractions import Fraction

import pytest

from red_megatron.study.tasks.synthetic import (DIFFICULTIES, INSTRUCTION, SyntheticTaskConfig, fmt, generate_problems,
                                         make_rows, target_text, write_parquet)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval(expr: str, x: Fraction | None = None) -> Fraction:
    """Exact evaluation of + - * / expressions (a/b is an exact fraction), independent of the generator."""
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return Fraction(n.value)
        if isinstance(n, ast.Name) and n.id == "x":
            return x
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp):
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        raise AssertionError(f"unexpected node {ast.dump(n)}")
    return ev(ast.parse(expr, mode="eval"))


def _last_boxed(text: str) -> str:
    i = text.rindex("\\boxed{")
    depth, j = 0, i + len("\\boxed{") - 1
    for j in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            break
    return text[i + len("\\boxed{"):j]


def _latex_value(s: str) -> Fraction:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", s)
    if m:
        return Fraction(int(m[2]), int(m[3])) * (-1 if m[1] else 1)
    return Fraction(int(s))


_STEP = re.compile(r"(\(?-?\d+\)?) ([-+*/]) (\(?-?\d+\)?) = (-?\d+)(?!\d|/)")


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("detail", [0, 1, 2])
def test_every_answer_and_step_is_correct(difficulty, detail):
    problems = generate_problems(SyntheticTaskConfig(difficulty=difficulty, num_examples=150, seed=7,
                                                     trace_detail=detail))
    kinds = set()
    n_steps = 0
    for p in problems:
        kinds.add(p.kind)
        # the answer, independently recomputed from the problem statement
        if p.kind == "linear":
            lhs, rhs = p.expression.split(" == ")
            assert _eval(lhs, p.value) == _eval(rhs, p.value), p.question
            assert _eval(lhs, p.value + 1) != _eval(rhs, p.value + 1), "the solution must be unique"
        else:
            assert _eval(p.expression) == p.value, p.question
        assert _latex_value(p.answer) == p.value and p.answer == fmt(p.value)
        # the trace ends in \boxed{answer}, and every "a op b = c" step in it is true arithmetic
        assert p.trace.rstrip().endswith(f"\\boxed{{{p.answer}}}")
        assert _last_boxed(p.trace) == p.answer
        for a, op, b, c in _STEP.findall(p.trace):
            a, b = (int(v.strip("()")) for v in (a, b))
            assert _OPS[{"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}[op]](Fraction(a), Fraction(b)) \
                == int(c), f"wrong step in trace of {p.question!r}: {a} {op} {b} = {c}"
            n_steps += 1
    if difficulty in ("medium", "hard"):
        assert kinds == {"arithmetic", "linear", "fraction"}
        assert n_steps > len(problems), "traces should be multi-step"
    if difficulty == "copy":  # the demo task: single-digit answers that appear in the prompt
        assert all(len(p.answer) == 1 and p.answer in p.question for p in problems)
        assert len({p.answer for p in problems}) == 10


def test_difficulty_and_length_controls():
    def mean_len(**kw):
        ps = generate_problems(SyntheticTaskConfig(num_examples=100, seed=1, **kw))
        return sum(len(p.trace) for p in ps) / len(ps)
    assert mean_len(difficulty="medium", trace_detail=0) < mean_len(difficulty="medium", trace_detail=1) \
        < mean_len(difficulty="medium", trace_detail=2)
    assert max(mean_len(difficulty="copy"), mean_len(difficulty="easy")) < mean_len(difficulty="medium") \
        < mean_len(difficulty="hard")
    assert generate_problems(SyntheticTaskConfig(difficulty="copy", trace_detail=0, num_examples=1))[0].trace \
        .startswith("\\boxed{")


def test_copy_max_digit():
    ps = generate_problems(SyntheticTaskConfig(difficulty="copy", num_examples=50, copy_max_digit=1))
    assert {p.answer for p in ps} == {"0", "1"}
    default = generate_problems(SyntheticTaskConfig(difficulty="copy", num_examples=50))
    assert len({p.answer for p in default}) == 10


def test_deterministic_and_seeded():
    a = make_rows(SyntheticTaskConfig(difficulty="hard", num_examples=50, seed=3))
    b = make_rows(SyntheticTaskConfig(difficulty="hard", num_examples=50, seed=3))
    c = make_rows(SyntheticTaskConfig(difficulty="hard", num_examples=50, seed=4))
    assert a == b and a != c


def test_parquet_schema_and_round_trip(tmp_path):
    import pyarrow.parquet as pq

    cfg = SyntheticTaskConfig(difficulty="medium", num_examples=40, seed=2)
    path = write_parquet(cfg, tmp_path / "d" / "train.parquet")
    table = pq.read_table(path)
    assert {"data_source", "prompt", "target", "reward_model"} <= set(table.column_names)
    assert str(table.schema.field("prompt").type) == "list<element: struct<role: string, content: string>>"
    assert table.schema.field("reward_model").type.get_field_index("ground_truth") >= 0
    rows = table.to_pylist()
    assert rows == make_rows(cfg)
    for row in rows:
        assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith(INSTRUCTION)
        assert row["target"][0]["role"] == "assistant"
        assert _last_boxed(target_text(row["target"])) == row["reward_model"]["ground_truth"]
    # pandas/datasets (as LUFFY reads it) give numpy object arrays of dicts; target_text accepts those too
    as_numpy = table.column("target").to_numpy(zero_copy_only=False)
    assert target_text(as_numpy[0]) == rows[0]["target"][0]["content"]


def test_target_text_accepts_both_layouts():
    assert target_text([{"role": "assistant", "content": "t \\boxed{1}"}]) == "t \\boxed{1}"
    assert target_text(["t \\boxed{1}"]) == "t \\boxed{1}"
    assert target_text("t") == "t"
    with pytest.raises(ValueError, match="empty"):
        target_text([])


@pytest.mark.parametrize("kwargs,field", [(dict(difficulty="x"), "difficulty"), (dict(num_examples=0), "num_examples"),
                                          (dict(kinds=("calculus",)), "kinds"), (dict(trace_detail=3), "trace_detail"),
                                          (dict(copy_max_digit=0), "copy_max_digit")])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticTaskConfig(**kwargs)


def test_script(tmp_path):
    import pyarrow.parquet as pq

    from scripts.make_synthetic_task import main

    out = main(["--out", str(tmp_path / "copy.parquet"), "--difficulty", "copy", "-n", "12", "--seed", "5"])
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 12 and all(r["extra_info"]["difficulty"] == "copy" for r in rows)
