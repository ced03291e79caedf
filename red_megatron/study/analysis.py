"""The chain study's numbers, from the files runs leave: eval ``samples.jsonl`` and training ``metrics.jsonl``.

Pure functions over plain records (no torch, no engine), so the tests feed them hand-made inputs:
pass@k (the unbiased estimator of red_megatron.study.chain_base), per-band accuracy/LEN/truncation/replay,
Wait markers per chain stage (Figure 5), compute columns, per-step series with ΔH and the raw ratio for
every preset with offline samples, mean ± std over seeds and paired Δ vs ``red`` with sign counts.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from red_megatron.study.chain_base import pass_at_k

BANDS = ("chain_easy", "chain_medium", "chain_hard")
PASS_KS = (1, 2, 4, 8, 16, 32)  # k <= n only: 32 needs the GPU flag set's avg@32
ANSWER_SPACE = 900  # 3-digit golds without a leading zero
REPLAY = "Wait, let me verify the whole chain again."
CHECK = "Wait, let me check:"
WAIT = "Wait"
STAGES = ("open", "initial", "intermediate", "final")
_LINE = re.compile(r"(?<![\d|])(\d+)\|(\d+)")


def chance_pass_at_k(k: int, space: int = ANSWER_SPACE) -> float:
    """Percent: the chance that one of k uniform guesses over ``space`` answers is right."""
    return 100.0 * (1.0 - (1.0 - 1.0 / space) ** k)


def num(x) -> float | None:
    """A metrics value as a finite float, or None ('nan' strings, NaN, missing)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def mean_std(xs) -> tuple[float | None, float | None]:
    """(mean, sample std with n−1; 0.0 for one value) over the non-None values."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def read_samples(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
    return out


def wait_stages(text: str) -> dict[str, int]:
    """Wait markers of one response by stage: open (before the first chain line), initial / intermediate /
    final (the first, middle and last third of the first pass's lines); final also counts the replay and
    anything after the ``0|`` line."""
    counts = dict.fromkeys(STAGES, 0)
    lines, end = [], len(text)
    rep = text.find(REPLAY)
    last = None
    for m in _LINE.finditer(text):
        if rep >= 0 and m.start() >= rep:
            break
        if m.group(1) == last:  # a check's restated line ("Yes, j|abc") is not a new line
            continue
        last = m.group(1)
        lines.append(m.start())
        if int(m.group(1)) == 0:
            end = m.end()
            break
    if rep >= 0:
        end = min(end, rep)
    for m in re.finditer(WAIT, text):
        p = m.start()
        if not lines or p < lines[0]:
            counts["open"] += 1
        elif p >= end:
            counts["final"] += 1
        else:
            idx = sum(1 for q in lines if q < p) - 1  # the line this marker follows
            counts[STAGES[1 + min(2, idx * 3 // len(lines))]] += 1
    return counts


def band_summary(samples: list[dict], ks=PASS_KS) -> dict:
    """One band's numbers from its samples (every problem with the same number of samples)."""
    by_problem: dict = {}
    for s in samples:
        by_problem.setdefault(s["problem"], []).append(s)
    ns = {len(v) for v in by_problem.values()}
    if len(ns) != 1:
        raise ValueError(f"samples: problems have different sample counts {sorted(ns)}; pass@k needs the same n")
    n = ns.pop()
    texts = [s.get("response", "") for s in samples]
    stages = [wait_stages(t) for t in texts]
    return {
        "acc": 100.0 * mean([mean([float(s["reward"]) for s in v]) for v in by_problem.values()]),
        "len": mean([float(s["length"]) for s in samples]),
        "trunc": 100.0 * mean([float(bool(s["truncated"])) for s in samples]),
        "replay": 100.0 * mean([float(REPLAY in t) for t in texts]),
        "checks": mean([float(t.count(CHECK)) for t in texts]),
        "wait": {st: mean([c[st] for c in stages]) for st in STAGES},
        "pass": {k: 100.0 * mean([pass_at_k(n, sum(float(s["reward"]) > 0.5 for s in v), k)
                                  for v in by_problem.values()]) for k in ks if k <= n},
        "n_problems": len(by_problem), "n": n,
    }


def eval_summary(samples: list[dict], k_of_row: dict[int, int] | None = None, bands=BANDS, ks=PASS_KS) -> dict:
    """{band: band_summary, 'overall': unweighted means of the bands, 'by_k': {k: len/trunc/replay/acc}}."""
    out = {}
    for b in bands:
        rows = [s for s in samples if s["data_source"] == b]
        if rows:
            out[b] = band_summary(rows, ks)
    if not out:
        raise ValueError(f"samples: no sample of the bands {list(bands)} (data_source values: "
                         f"{sorted({s.get('data_source') for s in samples})})")
    present = [out[b] for b in bands if b in out]
    out["overall"] = {key: mean([p[key] for p in present]) for key in ("acc", "len", "trunc", "replay", "checks")}
    out["overall"]["pass"] = {k: mean([p["pass"].get(k) for p in present]) for k in ks}
    out["overall"]["wait"] = {st: mean([p["wait"][st] for p in present]) for st in STAGES}
    if k_of_row:
        by_k: dict = {}
        for s in samples:
            by_k.setdefault(k_of_row[s["row"]], []).append(s)
        out["by_k"] = {k: {"len": mean([float(s["length"]) for s in v]),
                           "trunc": 100.0 * mean([float(bool(s["truncated"])) for s in v]),
                           "replay": 100.0 * mean([float(REPLAY in s.get("response", "")) for s in v]),
                           "acc": 100.0 * mean([float(s["reward"]) for s in v])} for k, v in sorted(by_k.items())}
    return out


def series(records: list[dict]) -> dict[str, list]:
    """Per-step series of one stage: the logged ones, plus ΔH^rl, ΔH^sft and the raw ratio ΔH^sft/ΔH^rl
    recomputed from H for every preset (Eq. 9's relative change; None on the first step)."""
    from red_megatron.algo.entropy import relative_change

    keys = {"h_rl": "entropy/h_rl", "h_sft": "entropy/h_sft", "w": "red/w", "acc": "reward/online_accuracy",
            "len": "response/online_mean_length", "off_len": "response/offline_mean_length"}
    out = {name: [num(r.get(k)) for r in records] for name, k in keys.items()}
    out["step"] = [int(r["step"]) for r in records]
    d_rl, d_sft, ratio = [None], [None], [None]
    for i in range(1, len(records)):
        a, b = out["h_rl"][i], out["h_rl"][i - 1]
        c, d = out["h_sft"][i], out["h_sft"][i - 1]
        x = relative_change(a, b) if a is not None and b is not None else None
        y = relative_change(c, d) if c is not None and d is not None else None
        d_rl.append(x)
        d_sft.append(y)
        ratio.append(y / x if x and y is not None else None)
    out.update(d_rl=d_rl, d_sft=d_sft, ratio=ratio)
    return out


def compute_columns(stages: list[list[dict]], num_online: int, batch: int) -> dict:
    """Rollout tokens (online samples), trained tokens (online + traces) and the stages' step seconds."""
    rollout = trained = wall = 0.0
    for recs in stages:
        for r in recs:
            on, off = num(r.get("response/online_mean_length")), num(r.get("response/offline_mean_length"))
            rollout += num_online * batch * on if on is not None else 0.0
            trained += (num_online * batch * on if on is not None else 0.0) + (batch * off if off is not None else 0.0)
            wall += sum(num(r.get(k)) or 0.0 for k in ("time/rollout", "time/old_logprobs", "time/train",
                                                         "time/refit"))
    return {"rollout_tok": rollout, "trained_tok": trained, "step_s": wall}


def paired_delta(values: dict[int, float | None], ref: dict[int, float | None]) -> dict:
    """Δ = value − ref over the seeds both have: mean, std, SE, sign counts."""
    seeds = sorted(s for s in values if values.get(s) is not None and ref.get(s) is not None)
    d = [values[s] - ref[s] for s in seeds]
    m, sd = mean_std(d)
    return {"seeds": seeds, "deltas": d, "mean": m, "std": sd,
            "se": (sd / math.sqrt(len(d)) if d and sd is not None else None),
            "above": sum(x > 0 for x in d), "below": sum(x < 0 for x in d), "n": len(d)}


def ks_2samp(a: list[float], b: list[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, asymptotic p) (Kolmogorov's series; coarse for small samples)."""
    a, b = sorted(a), sorted(b)
    if not a or not b:
        raise ValueError("ks_2samp: both samples need at least one value")
    i = j = 0
    d = 0.0
    while i < len(a) and j < len(b):
        x = min(a[i], b[j])
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        d = max(d, abs(i / len(a) - j / len(b)))
    ne = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, min(1.0, max(0.0, p))
