"""The grader against a hand-labelled corpus, the false accepts of issue 16, and the gold
self-check on the six benchmarks.

The corpus (tests/data/grading_corpus.jsonl, written by tests/data/grading_corpus_gen.py)
is labelled by construction; every triple must agree, through RewardScorer's full path
(extraction, exact-match fast path, workers).
"""
import json
from collections import Counter
from pathlib import Path

import pytest

from red_megatron.reward import RewardConfig, RewardScorer
from red_megatron.reward.grader import GradeOptions, grade
from red_megatron.reward.selfcheck import frac_to_slash, gold_variants, self_check
from red_megatron.reward.verify import gold_parses, verify_answer
from tests.conftest import shared_data_dir

CORPUS = Path(__file__).parent / "data" / "grading_corpus.jsonl"


def _corpus():
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


def test_corpus_shape():
    rows = _corpus()
    assert len(rows) >= 300
    assert sum(r["expected"] == 0.0 for r in rows) >= len(rows) / 3  # near misses
    kinds = Counter(r["type"] for r in rows)
    for k in ("matrix", "interval", "list", "tuple", "equation", "trailing_dot", "units", "text", "percent",
              "multi", "rounding"):
        assert kinds[k] >= 4, (k, kinds)


def test_corpus_agrees_through_the_scorer():
    rows = _corpus()
    with RewardScorer(RewardConfig(num_workers=2, timeout_s=20.0)) as scorer:
        rewards, stats = scorer.score([r["response"] for r in rows], [r["gold"] for r in rows])
    wrong = [(r["type"], r["gold"], r["response"], r["expected"], why)
             for r, got, why in zip(rows, rewards, stats.reasons) if got != r["expected"]]
    assert not wrong, f"{len(wrong)} of {len(rows)} disagree: {wrong[:10]}"
    assert stats.timeouts == stats.crashes == stats.errors == 0


# Each of these scored 1 with the verifier before issue 16 (math-verify's defaults, golds
# containing \begin{ left unwrapped): the report's BEFORE column runs them on that code.
ISSUE_FALSE_ACCEPTS = [
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", "5/3"),
    (r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}", "-7"),
    (r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}", r"-\frac{18}{5}"),
    ("-1./3", "-1"),
    ("-3./2", "-3"),
    (r"\hbar \omega(v+1 / 2)-\frac{E_{0}^{2} e^{2}}{2 m \omega^{2}}", "2"),
    ("$N=n$", "N=n + 1"),
    ("$221,$8$", "221"),
    (r"\frac{9}{52}", "0.1730769"),
]
ISSUE_FALSE_REJECTS = [
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", r"\begin{pmatrix}-1/3\\2/3\\5/3\end{pmatrix}"),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", r"\begin{bmatrix} -1/3 \\ 2/3 \\ 5/3 \end{bmatrix}"),
    (r"\begin{pmatrix} 16/49 \\ 48/49 \\ 24/49 \end{pmatrix}", r"\begin{pmatrix}\frac{16}{49}\\\frac{48}{49}\\\frac{24}{49}\end{pmatrix}"),
    ("-1./3", "-1/3"),
    ("-3./2", r"-\frac{3}{2}"),
]


@pytest.mark.parametrize("gold,pred", ISSUE_FALSE_ACCEPTS)
def test_issue_false_accepts_are_rejected(gold, pred):
    assert verify_answer(pred, gold) == (False, "wrong")


@pytest.mark.parametrize("gold,pred", ISSUE_FALSE_REJECTS)
def test_issue_false_rejects_are_accepted(gold, pred):
    assert verify_answer(pred, gold) == (True, "correct")


def test_relative_tolerance_is_an_option():
    assert grade("0.1730769", r"\frac{9}{52}")[0] is False  # default 1e-9
    assert grade("0.1730769", r"\frac{9}{52}", GradeOptions(rel_tol=1e-6))[0] is True
    assert grade("0.17", r"\frac{9}{52}", GradeOptions(rel_tol=1e-6))[0] is False
    assert grade("0", "3.89e-10", GradeOptions(rel_tol=1e-3))[0] is False  # relative, never absolute
    assert grade(r"\begin{pmatrix}1\\0.1730769\end{pmatrix}", r"\begin{pmatrix}1\\\frac{9}{52}\end{pmatrix}",
                 GradeOptions(rel_tol=1e-6))[0] is True  # element-wise
    with pytest.raises(ValueError, match="rel_tol"):
        GradeOptions(rel_tol=2.0)
    with pytest.raises(ValueError, match="rel_tol"):
        RewardConfig(rel_tol=-1e-3)


def test_rel_tol_reaches_the_workers():
    with RewardScorer(RewardConfig(num_workers=1, rel_tol=1e-6)) as loose:
        rewards, _ = loose.score(["\\boxed{0.1730769}", "\\boxed{0.17}"], ["\\frac{9}{52}"] * 2)
    assert rewards == [1.0, 0.0]


def test_frac_to_slash_variants():
    assert frac_to_slash(r"\frac{1}{4} n(n+1)") == "(1/4) n(n+1)"
    assert frac_to_slash(r"-\frac{1}{2}") == "-1/2"
    assert frac_to_slash(r"\frac{a+1}{b}") == "(a+1)/b"
    assert frac_to_slash(r"1\frac{4}{5}") == r"1\frac{4}{5}"  # a mixed number keeps its form
    v = gold_variants(r"$\begin{pmatrix} 1 \\ 2 \end{pmatrix}$")
    assert v["bmatrix"] == r"\begin{bmatrix} 1 \\ 2 \end{bmatrix}" and v["no_spaces"] == r"\begin{pmatrix}1\\2\end{pmatrix}"


def _golds_by_benchmark():
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow reads math_eval.parquet")
    path = shared_data_dir() / "math_eval.parquet"
    if not path.exists():
        pytest.skip(f"{path} is absent; set RED_SHARED_DATA to the directory holding math_eval.parquet")
    out = {}
    for r in pq.read_table(path, columns=["data_source", "reward_model"]).to_pylist():
        out.setdefault(r["data_source"], {})[r["reward_model"]["ground_truth"]] = None
    return {k: list(v) for k, v in out.items()}


def test_every_gold_matches_itself_in_the_forms_a_model_writes():
    golds = _golds_by_benchmark()
    assert set(golds) == {"math", "minerva", "olympiad_bench", "aime", "aime25", "amc"}
    failures = {b: self_check(gs, lambda v, g: verify_answer(v, g)[0]) for b, gs in golds.items()}
    assert all(not f for f in failures.values()), {b: f[:5] for b, f in failures.items() if f}


def test_load_time_check_flags_exactly_the_unparseable_golds():
    golds = [g for gs in _golds_by_benchmark().values() for g in gs]
    flagged = [g for g in golds if not gold_parses(g)]
    # the two olympiad golds that are not mathematics a parser can read: a sentence, and "t(0,4]"
    assert sorted(flagged) == sorted(["$t(0,4]$", next(g for g in golds if "arbitrary integer" in g)]), flagged
    for bad in ("}{", "\\frac{", ""):
        assert not gold_parses(bad)
