"""The built-in verifiable task: seeded math problems with exact answers and teacher traces.

Why: tests and the CPU demo need prompts with a gold answer *and* an offline "teacher" chain of
thought per prompt, in exactly the schema real distilled data uses, so that OpenR1/LUFFY parquet
drops in without code changes. Every answer is computed exactly (``fractions.Fraction``) and every
trace is built from the same computation, step by step, ending in ``\\boxed{answer}``.

Schema written (one row a problem; the OpenR1-Math-46k / LUFFY layout, RED_SPEC.md):
- ``data_source``: str
- ``prompt``: list<struct<role: str, content: str>> (chat messages; one user turn)
- ``target``: list<struct<role: str, content: str>> (one ``{"role": "assistant", "content": trace}``,
  as LUFFY stores it and reads it with ``example['target'][0]['content']``). Readers should go
  through :func:`target_text`, which also accepts a list of plain strings or a bare string.
- ``reward_model``: struct<ground_truth: str, style: str>  (style "rule")
- ``ability``: str ("math"); ``extra_info``: struct<index: int64, kind: str, difficulty: str>

Difficulties:
- ``copy``: the demo task a tiny *random* model learns in a few RED steps. The prompt is a short
  instruction and one digit; the answer is that digit; the trace is just ``\\boxed{d}`` (or one
  sentence and the box with ``trace_detail >= 1``). Learning it needs only the constant format
  ``\\boxed{`` ``d`` ``}`` (learned from the offline trace by imitation, which RED's policy shift
  turns into plain NLL while online accuracy is 0) plus copying one token from the prompt; once the
  format is there, even a random digit scores 1 in 10, so online reward rises within a few steps.
  Measured with the default tiny checkpoint (plain NLL on the traces with trace_detail=0, AdamW
  lr 3e-3, 8 traces a step): the ``\\boxed{d}`` format is greedy output after <= 10 steps, the
  right digit 13% at step 20, 56% at 70, 72% at 80. ``copy_max_digit`` shrinks the digit set
  (1: answers 0/1, chance 1/2) for a denser reward signal early on.
- ``easy``: one addition or subtraction of single digits with a single-digit answer.
- ``medium``/``hard``: multi-step integer arithmetic, linear equations, sums of fractions;
  ``hard`` has more steps, larger numbers, x on both sides, three fractions.
``trace_detail`` (0, 1, 2) controls trace length: 2 restates the problem and checks each result.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

DIFFICULTIES = ("copy", "easy", "medium", "hard")
KINDS = ("arithmetic", "linear", "fraction")
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(kw_only=True)
class SyntheticTaskConfig:
    """What to generate. ``kinds`` applies to medium/hard; copy and easy have one kind each."""

    difficulty: str = "medium"
    num_examples: int = 256
    seed: int = 0
    kinds: tuple[str, ...] = KINDS
    trace_detail: int = 1
    data_source: str = "synthetic_math"
    copy_max_digit: int = 9  # copy task: digits 0..copy_max_digit (1 = coin flip: chance accuracy 1/2)

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"SyntheticTaskConfig.difficulty must be one of {DIFFICULTIES}, got {self.difficulty!r}")
        if self.num_examples < 1:
            raise ValueError(f"SyntheticTaskConfig.num_examples must be >= 1, got {self.num_examples}")
        if self.seed < 0:
            raise ValueError(f"SyntheticTaskConfig.seed must be >= 0, got {self.seed}")
        self.kinds = tuple(self.kinds)
        if not self.kinds or any(k not in KINDS for k in self.kinds):
            raise ValueError(f"SyntheticTaskConfig.kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if not 1 <= self.copy_max_digit <= 9:
            raise ValueError(f"SyntheticTaskConfig.copy_max_digit must be in [1, 9], got {self.copy_max_digit}")
        if self.trace_detail not in (0, 1, 2):
            raise ValueError(f"SyntheticTaskConfig.trace_detail must be 0, 1 or 2, got {self.trace_detail}")


@dataclass(kw_only=True)
class Problem:
    question: str  # the user turn's text
    answer: str  # the gold answer, LaTeX (``7``, ``-3``, ``\\frac{5}{6}``)
    value: Fraction  # its exact value, for tests
    trace: str  # teacher chain of thought ending in \boxed{answer}
    kind: str
    expression: str  # a Python-evaluable statement of the problem ("x" solved for linear), for tests


def fmt(v: Fraction) -> str:
    """LaTeX of an exact number: integers plain, others as a reduced \\frac with a leading minus."""
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def _paren(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


# --- arithmetic: a random expression tree, reduced one operation at a time -------------------------

_PREC = {"+": 1, "-": 1, "*": 2}


def _rand_tree(rng: random.Random, n_ops: int, max_operand: int):
    if n_ops == 0:
        return rng.randint(1, max_operand)
    left = rng.randint(0, n_ops - 1)
    op = rng.choice("+-*") if n_ops > 1 or max_operand > 9 else rng.choice("+-")
    return (op, _rand_tree(rng, left, max_operand), _rand_tree(rng, n_ops - 1 - left, max_operand))


def _render(t, parent_prec: int = 0, right: bool = False) -> str:
    if isinstance(t, int):
        return _paren(t) if parent_prec else str(t)
    op, a, b = t
    s = f"{_render(a, _PREC[op])} {op} {_render(b, _PREC[op], right=True)}"
    if _PREC[op] < parent_prec or (right and _PREC[op] == parent_prec and parent_prec == 1):
        s = f"({s})"
    return s


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _reduce_one(t):
    """Evaluate the leftmost operation whose operands are both numbers; return (tree, step text)."""
    op, a, b = t
    if isinstance(a, int) and isinstance(b, int):
        v = _apply(op, a, b)
        return v, f"{_paren(a)} {op} {_paren(b)} = {v}"
    if not isinstance(a, int):
        a2, step = _reduce_one(a)
        return (op, a2, b), step
    b2, step = _reduce_one(b)
    return (op, a, b2), step


def _arithmetic(rng: random.Random, hard: bool, detail: int) -> Problem:
    n_ops, max_operand = (rng.randint(4, 6), 60) if hard else (rng.randint(2, 3), 20)
    t = _rand_tree(rng, n_ops, max_operand)
    expr = _render(t)
    lines = [f"We need to evaluate {expr}."] if detail >= 1 else []
    if detail >= 1:
        lines.append("Multiplication comes before addition and subtraction, and parentheses come first.")
    step_no = 0
    while not isinstance(t, int):
        t, step = _reduce_one(t)
        step_no += 1
        lines.append(f"Step {step_no}: {step}." + (f" The expression is now {_render(t)}." if detail >= 1
                                                    and not isinstance(t, int) else ""))
    value = Fraction(t)
    if detail >= 2:
        lines.append(f"Check: evaluating {expr} again from the start gives {t}, the same result.")
    lines.append(f"So the value is {t}." if detail >= 1 else "")
    return Problem(question=f"Compute {expr}.", answer=fmt(value), value=value, kind="arithmetic",
                   trace=_finish(lines, value), expression=expr)


# --- linear equations ----------------------------------------------------------------------------------

def _lin(a: int, b: int) -> str:
    """a*x + b as text."""
    ax = "x" if a == 1 else "-x" if a == -1 else f"{a}x"
    return ax if b == 0 else f"{ax} + {b}" if b > 0 else f"{ax} - {-b}"


def _linear(rng: random.Random, hard: bool, detail: int) -> Problem:
    x = rng.randint(-12, 12) if hard else rng.randint(-9, 9)
    a = rng.choice([v for v in range(-9, 10) if v not in (0,)]) if hard else rng.randint(2, 9)
    b = rng.randint(-30, 30)
    lines = []
    if hard:
        d = rng.choice([v for v in range(-9, 10) if v not in (0, a)])
        e = a * x + b - d * x
        eq = f"{_lin(a, b)} = {_lin(d, e)}"
        if detail >= 1:
            lines.append(f"We solve {eq} for x.")
        lines.append(f"Subtract {_lin(d, 0)} from both sides: ({a} - {_paren(d)})x + {_paren(b)} = {e}, "
                     f"so {_lin(a - d, b)} = {e}.")
        a, c = a - d, e
    else:
        c = a * x + b
        eq = f"{_lin(a, b)} = {c}"
        if detail >= 1:
            lines.append(f"We solve {eq} for x.")
    lines.append(f"Subtract {_paren(b)} from both sides: {_lin(a, 0)} = {c} - {_paren(b)} = {c - b}.")
    lines.append(f"Divide both sides by {_paren(a)}: x = {c - b} / {_paren(a)} = {x}.")
    if detail >= 2:
        lines.append(f"Check: substituting x = {x} into {eq} gives equal sides.")
    if detail >= 1:
        lines.append(f"So x = {x}.")
    value = Fraction(x)
    lhs, rhs = eq.split(" = ")
    return Problem(question=f"Solve for x: {eq}.", answer=fmt(value), value=value, kind="linear",
                   trace=_finish(lines, value), expression=f"{_py(lhs)} == {_py(rhs)}")


def _py(side: str) -> str:
    """'3x - 4' -> '3*x - 4' so tests can evaluate it."""
    out = []
    for i, ch in enumerate(side):
        if ch == "x" and i > 0 and side[i - 1].isdigit():
            out.append("*")
        out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class _Frac:
    numerator: int
    denominator: int


# --- fractions --------------------------------------------------------------------------------------------

def _fraction(rng: random.Random, hard: bool, detail: int) -> Problem:
    n_terms, max_den = (3, 12) if hard else (2, 9)
    dens = [rng.randint(2, max_den) for _ in range(n_terms)]
    terms = [_Frac(rng.randint(1, d - 1), d) for d in dens]  # proper, possibly unreduced (2/4)
    signs = ["+"] + [rng.choice("+-") if hard else "+" for _ in range(n_terms - 1)]
    expr = " ".join(p for i, (s, t) in enumerate(zip(signs, terms))
                    for p in ([s] if i else []) + [f"{t.numerator}/{t.denominator}"])
    lines = [f"We need to compute {expr} as a reduced fraction."] if detail >= 1 else []
    den = math.lcm(*[t.denominator for t in terms])
    lines.append(f"The least common denominator of {', '.join(str(t.denominator) for t in terms)} is {den}.")
    nums = []
    for t in terms:
        k = den // t.denominator
        nums.append(t.numerator * k)
        lines.append(f"{t.numerator}/{t.denominator} = {t.numerator} * {k} / {den} = {t.numerator * k}/{den}.")
    total = nums[0]
    for s, n in zip(signs[1:], nums[1:]):
        new = total + n if s == "+" else total - n
        lines.append(f"{total} {s} {n} = {new}.")
        total = new
    value = Fraction(total, den)
    assert value == sum((Fraction(t.numerator, t.denominator) * (1 if s == "+" else -1)
                         for s, t in zip(signs, terms)), Fraction(0))
    g = math.gcd(total, den)
    if g > 1:
        lines.append(f"The numerator {total} and denominator {den} share the factor {g}: "
                     f"{total}/{den} = {total // g}/{den // g}.")
    else:
        lines.append(f"The fraction {total}/{den} is already in lowest terms.")
    if detail >= 2:
        lines.append(f"Check: {value.numerator}/{value.denominator} times {den} is {total}, as it should be.")
    return Problem(question=f"Compute {expr}. Give the answer as a reduced fraction.", answer=fmt(value),
                   value=value, kind="fraction", trace=_finish(lines, value), expression=expr)


# --- copy and easy ------------------------------------------------------------------------------------------

def _copy(rng: random.Random, detail: int, max_digit: int = 9) -> Problem:
    d = rng.randint(0, max_digit)
    lines = [f"The digit is {d}."] if detail >= 1 else []
    if detail >= 2:
        lines.append(f"Putting {d} in a box.")
    return Problem(question=f"Box the digit {d}.", answer=str(d), value=Fraction(d), kind="copy",
                   trace=_finish(lines, Fraction(d)), expression=str(d))


def _easy(rng: random.Random, detail: int) -> Problem:
    a = rng.randint(0, 9)
    if rng.random() < 0.5:
        b = rng.randint(0, 9 - a)
        expr, v = f"{a} + {b}", a + b
    else:
        b = rng.randint(0, a)
        expr, v = f"{a} - {b}", a - b
    lines = [f"{expr} = {v}."] if detail >= 1 else []
    if detail >= 2:
        lines.insert(0, f"We need {expr}.")
    return Problem(question=f"{expr} = ?", answer=str(v), value=Fraction(v), kind="easy",
                   trace=_finish(lines, Fraction(v)), expression=expr)


def _finish(lines: list[str], value: Fraction) -> str:
    body = "\n".join(line for line in lines if line)
    box = f"\\boxed{{{fmt(value)}}}"
    return f"{body}\n{box}" if body else box


def generate_problems(cfg: SyntheticTaskConfig) -> list[Problem]:
    """``cfg.num_examples`` problems; the same config always gives the same list."""
    rng = random.Random(f"red-megatron-synthetic:{cfg.seed}:{cfg.difficulty}")
    out = []
    for _ in range(cfg.num_examples):
        if cfg.difficulty == "copy":
            out.append(_copy(rng, cfg.trace_detail, cfg.copy_max_digit))
        elif cfg.difficulty == "easy":
            out.append(_easy(rng, cfg.trace_detail))
        else:
            kind = rng.choice(cfg.kinds)
            gen = {"arithmetic": _arithmetic, "linear": _linear, "fraction": _fraction}[kind]
            out.append(gen(rng, cfg.difficulty == "hard", cfg.trace_detail))
    return out


def problem_to_row(p: Problem, index: int, cfg: SyntheticTaskConfig) -> dict:
    """One parquet row in the OpenR1/LUFFY schema (see the module docstring)."""
    content = p.question if cfg.difficulty == "copy" else f"{p.question} {INSTRUCTION}"
    return {
        "data_source": cfg.data_source,
        "prompt": [{"role": "user", "content": content}],
        "target": [{"role": "assistant", "content": p.trace}],
        "reward_model": {"ground_truth": p.answer, "style": "rule"},
        "ability": "math",
        "extra_info": {"index": index, "kind": p.kind, "difficulty": cfg.difficulty},
    }


def make_rows(cfg: SyntheticTaskConfig) -> list[dict]:
    return [problem_to_row(p, i, cfg) for i, p in enumerate(generate_problems(cfg))]


def write_parquet(cfg: SyntheticTaskConfig, path) -> Path:
    """Generate ``cfg`` and write it as parquet with an explicit schema (stable across pyarrow versions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    msg = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    schema = pa.schema([
        ("data_source", pa.string()), ("prompt", msg), ("target", msg),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("ability", pa.string()),
        ("extra_info", pa.struct([("index", pa.int64()), ("kind", pa.string()), ("difficulty", pa.string())])),
    ])
    table = pa.Table.from_pylist(make_rows(cfg), schema=schema)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def target_text(target) -> str:
    """The offline trace of a row's ``target``, whichever way a dataset stores it.

    Accepts a list (or array) whose first item is ``{"role": "assistant", "content": trace}`` (LUFFY,
    this module) or a plain string, a bare string, or a dict with ``content``.
    """
    if isinstance(target, str):
        return target
    if isinstance(target, dict):
        if "content" not in target:
            raise ValueError(f"target dict has no 'content' key: keys {sorted(target)}")
        return str(target["content"])
    items = list(target) if target is not None else []
    if not items:
        raise ValueError("target is empty: expected a list with one assistant message or trace string")
    return target_text(items[0])


def tokenizer_corpus() -> list[str]:
    """Texts the tiny checkpoint's BPE is trained on: chat-rendered rows of every difficulty and detail."""
    texts = []
    for difficulty in DIFFICULTIES:
        for detail in (0, 1, 2):
            cfg = SyntheticTaskConfig(difficulty=difficulty, num_examples=60, seed=12345, trace_detail=detail)
            for row in make_rows(cfg):
                # special tokens are added by the trainer itself, not learned from text
                texts.append(f"user\n{row['prompt'][0]['content']}\nassistant\n{row['target'][0]['content']}\n")
    return texts
