"""Grader report: false-accept / false-reject rates per benchmark, before and after, and the
verification time of a batch of adversarial answers.

For every distinct gold answer in ``$RED_SHARED_DATA/math_eval.parquet`` (default
``../shared/data``): the right answers are selfcheck.gold_variants (the gold as a model
writes it) and the wrong ones selfcheck.near_misses (wrong by construction). Both go
through RewardScorer as ``\\boxed{...}`` responses:
- AFTER: this checkout's red_megatron.reward;
- BEFORE: red_megatron/reward at ``--before-rev`` (the commit before the grader), taken
  with ``git archive`` into a temporary directory and run there in a subprocess.
Then the adversarial batch (answers that make sympy hang or crawl, plus ordinary ones),
timed through both, and the pool's bound on answers that hang in the verifier itself.

    .venv/bin/python benchmarks/grader_report.py [--workers 2] [--before-rev d741f23]
Writes benchmarks/reports/grader_<date>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCHMARKS = ("math", "minerva", "olympiad_bench", "aime", "aime25", "amc")
ADVERSARIAL = [r"9^{9^{9^{9}}}", r"10^{10^{10^{10}}}", r"(9!)!!", r"2^{2^{2^{2^{2^{2}}}}}", r"99999999^{99999999}",
               r"\sqrt{9^{9^{9}}}", r"\frac{9^{9^{9}}}{7}", r"100000000!"]
ORDINARY = [(r"\frac{1}{2}", "0.5"), ("3", "3"), (r"2\sqrt{2}", r"\sqrt{8}"), ("x^2+1", "1+x^2")] * 6

# run in a subprocess with PYTHONPATH at the old tree: score pairs with that tree's RewardScorer
_RUNNER = r"""
import json, sys, time
from red_megatron.reward import RewardConfig, RewardScorer

def main():
    spec = json.load(open(sys.argv[1]))
    out = {}
    with RewardScorer(RewardConfig(num_workers=spec["workers"], timeout_s=spec["timeout_s"],
                                   typical_answer_s=spec["typical_answer_s"])) as s:
        s.score(["\\boxed{1}"] * spec["workers"], ["1"] * spec["workers"])
        for name, (resps, golds) in spec["batches"].items():
            t0 = time.monotonic()
            rewards, stats = s.score(resps, golds)
            out[name] = {"rewards": rewards, "seconds": time.monotonic() - t0, "stats": stats.as_dict()}
    json.dump(out, open(sys.argv[2], "w"))

if __name__ == "__main__":  # the workers start with forkserver
    main()
"""


def load_golds(path: Path) -> dict[str, list[str]]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise SystemExit(f"error: {path} not found; set RED_SHARED_DATA to the directory holding math_eval.parquet")
    golds: dict[str, dict[str, None]] = {}
    for r in pq.read_table(path, columns=["data_source", "reward_model"]).to_pylist():
        golds.setdefault(r["data_source"], {})[r["reward_model"]["ground_truth"]] = None
    return {k: list(v) for k, v in golds.items()}


def build_pairs(golds: dict[str, list[str]]):
    from red_megatron.reward.selfcheck import gold_variants, near_misses, number_perturbations

    rows = []  # (benchmark, gold, answer, expected, form)
    for bench, gs in golds.items():
        for g in gs:
            rows += [(bench, g, v, 1.0, name) for name, v in gold_variants(g).items()]
            rows += [(bench, g, v, 0.0, name) for name, v in near_misses(g).items()]
            rows += [(bench, g, v, 0.0, f"{PERTURBED}{k}") for k, v in enumerate(number_perturbations(g))]
    return rows


PERTURBED = "number_changed_"  # the form of a gold with its k-th number changed (selfcheck.number_perturbations)


def corpus_rows() -> list[dict]:
    path = ROOT / "tests" / "data" / "grading_corpus.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def perturbation_rates(rows, rewards) -> dict:
    out = {}
    for bench in BENCHMARKS:
        sel = [(r, got) for r, got in zip(rows, rewards) if r[0] == bench and r[4].startswith(PERTURBED)]
        out[bench] = {"perturbed": len(sel), "golds": len({r[1] for r, _ in sel}),
                      "accepted": sum(got == 1.0 for _, got in sel),
                      "accepted_pairs": [(r[1], r[2]) for r, got in sel if got == 1.0]}
    return out


def corpus_disagreements(corpus: list[dict], rewards) -> dict:
    out: dict[str, dict] = {}
    for r, got in zip(corpus, rewards):
        d = out.setdefault(r["type"], {"rows": 0, "false_accept": 0, "false_reject": 0})
        d["rows"] += 1
        d["false_accept"] += r["expected"] == 0.0 and got == 1.0
        d["false_reject"] += r["expected"] == 1.0 and got == 0.0
    return out


def score_before(rev: str, spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="grader_before_") as tmp:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "red_megatron/__init__.py", "red_megatron/reward"],
                             check=True, capture_output=True).stdout
        tarfile.open(fileobj=BytesIO(tar)).extractall(tmp)
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        Path(tmp, "runner.py").write_text(_RUNNER)
        env = dict(os.environ, PYTHONPATH=tmp)
        subprocess.run([sys.executable, str(Path(tmp, "runner.py")), str(Path(tmp, "spec.json")),
                        str(Path(tmp, "out.json"))], check=True, cwd=tmp, env=env)
        return json.loads(Path(tmp, "out.json").read_text())


def score_after(spec: dict) -> dict:
    from red_megatron.reward import RewardConfig, RewardScorer

    out = {}
    with RewardScorer(RewardConfig(num_workers=spec["workers"], timeout_s=spec["timeout_s"],
                                   typical_answer_s=spec["typical_answer_s"])) as s:
        s.score(["\\boxed{1}"] * spec["workers"], ["1"] * spec["workers"])
        for name, (resps, golds) in spec["batches"].items():
            t0 = time.monotonic()
            rewards, stats = s.score(resps, golds)
            out[name] = {"rewards": rewards, "seconds": time.monotonic() - t0, "stats": stats.as_dict()}
    return out


def hang_bound(workers: int, timeout_s: float, hang: str, patience_s: float | None = 1.0) -> dict:
    """Answers that hang inside the verifier (the tests' HANG hook: a sleep no alarm stops).
    ``hang`` is how they look: like a tower of powers (handed out last) or like a short
    answer (``HANG``: handed out before most ordinary ones, the worst case); ``patience_s``:
    RewardConfig.patience_s (None: hangs are never set aside, the pool before 2026-12-02)."""
    from red_megatron.reward import RewardConfig, RewardScorer

    cfg = RewardConfig(num_workers=workers, timeout_s=timeout_s, verify_fn="tests.test_reward:hooked_verify",
                       patience_s=patience_s)
    resps = [f"\\boxed{{{hang}}}"] * 8 + [f"\\boxed{{{p}}}" for p, _ in ORDINARY]
    golds = ["1"] * 8 + [g for _, g in ORDINARY]
    with RewardScorer(cfg) as s:
        s.score(["\\boxed{1}"] * workers, ["1"] * workers)
        t0 = time.monotonic()
        rewards, stats = s.score(resps, golds)
        secs = time.monotonic() - t0
    return {"answers": len(resps), "hanging": 8, "seconds": secs, "deadline_s": cfg.step_deadline_s(len(resps)),
            "serial_hangs_s": 8 / workers * timeout_s, "ordinary_correct": sum(rewards[8:]),
            "timeouts": stats.timeouts, "cut_by_deadline": stats.deadline, "set_aside": stats.set_aside,
            "patience_s": patience_s}


HANG_LOOKS = (("looks_slow", "HANG^{9^{9^{9}}}", "hangs that look slow (`HANG^{9^{9^{9}}}`: handed out last)"),
              ("looks_fast", "HANG", "hangs that look fast (`HANG`: handed out before most ordinary answers, "
                                     "the worst case)"))


def hangs_report(args) -> None:
    """Only the hang bound, with hangs set aside after patience_s (now) and never (before)."""
    load0 = os.getloadavg()[0]
    rows = [{"look": name, **hang_bound(args.workers, 5.0, hang, patience)}
            for patience in (None, 1.0) for name, hang, _ in HANG_LOOKS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"verifier_hangs_{args.date}"
    machine = (f"{args.machine} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"1-min load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")
    stem.with_suffix(".json").write_text(json.dumps({"date": args.date, "machine": machine, "rows": rows}, indent=1))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_util import rows_beside, run_meta

    rows_beside(stem.with_suffix(".json"), rows, run_meta(benchmark="grader_report --hangs-only"))
    what = {name: text for name, _, text in HANG_LOOKS}
    lines = [f"# Verifier hangs that look ordinary ({args.date})", "",
             f"Machine: {machine}. `python benchmarks/grader_report.py --hangs-only`. One `RewardScorer.score` call "
             f"of 32 answers: 8 that hang inside the verifier past every guard (the tests' `HANG` hook, a sleep no "
             f"alarm stops) and 24 ordinary ones; {args.workers} workers, timeout_s 5, the default step deadline "
             "(timeout + 0.25 s x answers/workers). `patience_s` None is the pool before this change (a hang holds "
             "its worker, and the queue behind it, for the whole timeout); 1.0 is the default now (past it, the "
             "answer is set aside on its own niced worker with its full timeout and a fresh worker serves the queue).",
             "", "| patience_s | hangs | seconds | deadline s | ordinary scored 1 | timeouts | cut by the deadline "
             "| set aside |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['patience_s']} | {what[r['look']]} | {r['seconds']:.1f} | {r['deadline_s']:.1f} "
                     f"| {r['ordinary_correct']:.0f}/24 | {r['timeouts']} | {r['cut_by_deadline']} | {r['set_aside']} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def rates(rows, rewards) -> dict:
    out = {}
    for bench in BENCHMARKS:
        sel = [(r, got) for r, got in zip(rows, rewards) if r[0] == bench]
        right = [got for r, got in sel if r[3] == 1.0]
        wrong = [got for r, got in sel if r[3] == 0.0]
        out[bench] = {"golds": len({r[1] for r, _ in sel}), "right": len(right), "near_misses": len(wrong),
                      "false_reject": sum(g == 0.0 for g in right), "false_accept": sum(g == 1.0 for g in wrong)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout-s", type=float, default=10.0, help="RewardConfig.timeout_s for both sides")
    ap.add_argument("--typical-answer-s", type=float, default=0.25,
                    help="RewardConfig.typical_answer_s for both sides (the step deadline's per-answer budget): "
                         "raise it on a loaded machine, where the deadline would cut answers and count them wrong")
    ap.add_argument("--before-rev", default="d741f23",
                    help="the commit whose red_megatron/reward is BEFORE (d741f23: main before issue 29; "
                         "the 2026-12-02 report used 5493a24, the commit before the grader)")
    ap.add_argument("--date", default="2026-12-06")
    ap.add_argument("--machine", default="2-core CPU dev machine")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "reports"))
    ap.add_argument("--hangs-only", action="store_true",
                    help="only the verifier-hang bound, with and without patience_s (verifier_hangs_<date>.md)")
    args = ap.parse_args()
    if args.hangs_only:
        hangs_report(args)
        return
    data = Path(os.environ.get("RED_SHARED_DATA", ROOT.parent / "shared" / "data")) / "math_eval.parquet"
    golds = load_golds(data)
    rows = build_pairs(golds)
    corpus = corpus_rows()
    adv_resps = [f"\\boxed{{{a}}}" for a in ADVERSARIAL] + [f"\\boxed{{{p}}}" for p, _ in ORDINARY]
    adv_golds = ["5"] * len(ADVERSARIAL) + [g for _, g in ORDINARY]
    spec = {"workers": args.workers, "timeout_s": args.timeout_s, "typical_answer_s": args.typical_answer_s,
            "batches": {"pairs": ([f"So \\boxed{{{r[2]}}}." for r in rows], [r[1] for r in rows]),
                        "adversarial": (adv_resps, adv_golds),
                        "corpus": ([r["response"] for r in corpus], [r["gold"] for r in corpus])}}
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    after = score_after(spec)
    before = score_before(args.before_rev, spec)
    bound = {name: hang_bound(args.workers, 5.0, hang) for name, hang, _ in HANG_LOOKS}
    res = {"date": args.date, "machine": f"{args.machine} ({platform.processor() or platform.machine()}, "
                                         f"{os.cpu_count()} cores visible, 1-min load average "
                                         f"{load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end "
                                         "of the run: other jobs shared the cores)",
           "workers": args.workers, "timeout_s": args.timeout_s, "typical_answer_s": args.typical_answer_s,
           "before_rev": args.before_rev,
           "before": rates(rows, before["pairs"]["rewards"]), "after": rates(rows, after["pairs"]["rewards"]),
           "adversarial": {"answers": len(adv_resps), "adversarial": len(ADVERSARIAL),
                           "before_s": before["adversarial"]["seconds"], "after_s": after["adversarial"]["seconds"],
                           "before_ordinary_correct": sum(before["adversarial"]["rewards"][len(ADVERSARIAL):]),
                           "after_ordinary_correct": sum(after["adversarial"]["rewards"][len(ADVERSARIAL):]),
                           "after_stats": after["adversarial"]["stats"]},
           "perturbation_before": perturbation_rates(rows, before["pairs"]["rewards"]),
           "perturbation_after": perturbation_rates(rows, after["pairs"]["rewards"]),
           "golds_without_numbers": sorted({g for gs in golds.values() for g in gs if not any(c.isdigit() for c in g)}),
           "corpus_before": corpus_disagreements(corpus, before["corpus"]["rewards"]),
           "corpus_after": corpus_disagreements(corpus, after["corpus"]["rewards"]), "corpus_rows": len(corpus),
           "pair_stats": {"before": before["pairs"]["stats"], "after": after["pairs"]["stats"]},
           "hang_bound": bound, "pairs": len(rows), "report_seconds": time.monotonic() - t0,
           "after_errors": [r[:5] for r, got in zip(rows, after["pairs"]["rewards"]) if got != r[3]][:40]}
    write(res, Path(args.out))


def write(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"grader_{res['date']}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_util, however this module was loaded
    from bench_util import rows_beside, run_meta

    rows_beside(stem.with_suffix(".json"), [{"benchmark": b, "when": w, **v} for w in ("before", "after")
                                            for b, v in res[w].items() if isinstance(v, dict)],
                run_meta(benchmark="grader_report"))
    pct = lambda a, b: f"{100.0 * a / b:.1f}% ({a}/{b})" if b else "-"
    lines = [f"# Grader: false accepts and false rejects, before and after ({res['date']})", "",
             f"Machine: {res['machine']}. RewardScorer with {res['workers']} workers, timeout_s {res['timeout_s']}, "
             f"typical_answer_s {res.get('typical_answer_s', 0.25)}, "
             f"exact-match fast path on (the defaults). BEFORE: red_megatron/reward at {res['before_rev']}; "
             f"AFTER: this checkout. {res['pairs']} (gold, answer) pairs from every distinct gold of math_eval.parquet: "
             "right answers are the gold as a model writes it (verbatim, `$` stripped, no spaces, `\\frac` as `/`, "
             "bmatrix for pmatrix), near misses are wrong by construction (last integer +1, sign flip, the last "
             "entry of a matrix/list alone, a list short of its last element, an equation's right side + 1, "
             "a fraction rounded to 7 digits, `-1` for `-1./3`, the gold with one of its numbers changed).", "",
             "| benchmark | golds | right | near misses | false reject BEFORE | false reject AFTER "
             "| false accept BEFORE | false accept AFTER |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for b in BENCHMARKS:
        x, y = res["before"][b], res["after"][b]
        lines.append(f"| {b} | {y['golds']} | {y['right']} | {y['near_misses']} | {pct(x['false_reject'], x['right'])} "
                     f"| {pct(y['false_reject'], y['right'])} | {pct(x['false_accept'], x['near_misses'])} "
                     f"| {pct(y['false_accept'], y['near_misses'])} |")
    a = res["adversarial"]
    lines += ["", "## Adversarial batch", "",
              f"{a['answers']} answers in one `score` call: {a['adversarial']} that make sympy hang or crawl "
              f"(`9^{{9^{{9^{{9}}}}}}`, `10^{{10^{{10^{{10}}}}}}`, `(9!)!!`, `99999999^{{99999999}}`, ...) and "
              f"{a['answers'] - a['adversarial']} ordinary ones, {res['workers']} workers, timeout_s {res['timeout_s']}:",
              "", f"- BEFORE: {a['before_s']:.2f} s ({a['before_ordinary_correct']:.0f} ordinary answers scored 1)",
              f"- AFTER: {a['after_s']:.2f} s ({a['after_ordinary_correct']:.0f} ordinary answers scored 1; the "
              "adversarial ones are refused before parsing, as timeouts; "
              f"stats {a['after_stats']})", "",
              "Answers that hang inside the verifier itself, past any guard (the tests' `HANG` hook, a sleep no "
              f"alarm can stop), 8 of 32 in one call, {res['workers']} workers, timeout_s 5 (one after another "
              "per worker, as before, the hangs alone would take "
              f"{res['hang_bound']['looks_slow']['serial_hangs_s']:.0f} s):", ""]
    for name, _, what in HANG_LOOKS:
        h = res["hang_bound"][name]
        lines.append(f"- {what}: {h['seconds']:.1f} s against a step deadline of {h['deadline_s']:.1f} s "
                     f"(timeout + 0.25 s x answers/workers); {h['ordinary_correct']:.0f}/24 ordinary answers "
                     f"scored 1, {h['timeouts']} timeouts, {h['cut_by_deadline']} cut by the deadline.")
    ps = res["pair_stats"]
    lines += ["", f"Timeouts among the pairs (an answer past its deadline scores 0, so a loaded machine shows as false "
                  f"rejects): BEFORE {ps['before']['timeouts']}, AFTER {ps['after']['timeouts']}."]
    lines += _perturbation_lines(res) + _corpus_lines(res)
    lines += ["",
              f"AFTER disagreements with the labels: {len(res['after_errors'])} (listed in the JSON). "
              f"Report wall time {res['report_seconds']:.0f} s."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _perturbation_lines(res: dict) -> list[str]:
    pb, pa = res["perturbation_before"], res["perturbation_after"]
    lines = ["", "## Each gold with one number changed", "",
             "Every distinct gold once per number in it, that number's last digit changed (+1 mod 10; "
             "`selfcheck.number_perturbations`): each must score 0. These pairs are also in the near misses above.",
             "", "| benchmark | golds with a number | perturbed golds | accepted BEFORE | accepted AFTER |",
             "|---|---:|---:|---:|---:|"]
    for b in BENCHMARKS:
        lines.append(f"| {b} | {pa[b]['golds']} | {pa[b]['perturbed']} | {pb[b]['accepted']} | {pa[b]['accepted']} |")
    accepted = [p for b in BENCHMARKS for p in pb[b]["accepted_pairs"]]
    lines += ["", f"Accepted BEFORE ({len(accepted)}): " + "; ".join(f"`{g}` -> `{p}`" for g, p in accepted)]
    left = [p for b in BENCHMARKS for p in pa[b]["accepted_pairs"]]
    lines += ["", f"Accepted AFTER ({len(left)}): " + ("; ".join(f"`{g}` -> `{p}`" for g, p in left) or "none")]
    nn = res["golds_without_numbers"]
    lines += ["", f"Golds that cannot be perturbed this way ({len(nn)}): they hold no digit (a variable, an "
              "expression in letters, an option letter, a word, a sentence), so there is no number to change: "
              + ", ".join(f"`{g}`" for g in nn) + "."]
    return lines


def _corpus_lines(res: dict) -> list[str]:
    cb, ca = res["corpus_before"], res["corpus_after"]
    lines = ["", "## The labelled corpus by class", "",
             f"tests/data/grading_corpus.jsonl ({res['corpus_rows']} rows, labelled by construction), scored "
             "through RewardScorer; the classes where BEFORE or AFTER disagrees with a label:", "",
             "| class | rows | false accept BEFORE | false accept AFTER | false reject BEFORE | false reject AFTER |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in sorted(ca):
        b, a = cb[k], ca[k]
        if b["false_accept"] or b["false_reject"] or a["false_accept"] or a["false_reject"]:
            lines.append(f"| {k} | {a['rows']} | {b['false_accept']} | {a['false_accept']} | {b['false_reject']} "
                         f"| {a['false_reject']} |")
    return lines


if __name__ == "__main__":
    main()
