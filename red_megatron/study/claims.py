"""The claim scorecard of STUDY_DESIGN §6.7, rules fixed before the run, filled in from a loaded study.

Each claim gets a verdict (supported / refuted / inconclusive) and the numbers behind it. Paired rules
("3/3 seeds") need MIN_SEEDS seeds of both presets; with fewer the claim is inconclusive by design. The
figure claims (C3-C6) are read per seed and hold only when every seed agrees. C10 reads the probe entropies
of §6.6 item 7 (red_megatron.study.probe) the same way: on the seed means and in every seed.
"""
from __future__ import annotations

from red_megatron.study.analysis import ks_2samp, mean, mean_std
from red_megatron.study.collect import deltas_vs_red, metric, paired_delta, probe

MIN_SEEDS = 3
SUPPORTED, REFUTED, INCONCLUSIVE = "supported", "refuted", "inconclusive"


def pair_rule(d: dict) -> str:
    """C1a's rule on a paired Δ: supported if Δ > 0 in every seed and mean Δ > 2 SE; refuted if Δ < 0 in every
    seed; both need at least MIN_SEEDS seeds."""
    if d["n"] < MIN_SEEDS:
        return INCONCLUSIVE
    if d["above"] == d["n"] and d["mean"] > 2 * (d["se"] or 0.0):
        return SUPPORTED
    if d["below"] == d["n"]:
        return REFUTED
    return INCONCLUSIVE


def _fmt_d(d: dict) -> str:
    if not d["n"]:
        return "no paired seeds"
    return f"Δ {d['mean']:+.1f} ± {d['std']:.1f} ({d['above']}/{d['n']} seeds above, SE {d['se']:.1f})"


def _acc(study, c, band="overall"):
    return metric(study, c, band, "acc")


def _pair(study, a, b, band="overall", key="acc"):
    return paired_delta(metric(study, a, band, key), metric(study, b, band, key))


def _claim(cid, text, verdict, why):
    return {"id": cid, "claim": text, "verdict": verdict, "numbers": why}


MIN_STEPS = 10  # a figure claim reads first/last windows of a run's steps: shorter runs are inconclusive


def _window(xs, frac, last=True):
    vals = [x for x in xs if x is not None]
    if len(vals) < MIN_STEPS:
        return None
    n = max(1, int(round(len(vals) * frac)))
    return mean(vals[-n:] if last else vals[:n])


def _series(study, config, stage=-1):
    return {s: cell["series"][stage] for s, cell in study["cells"].get(config, {}).items() if cell.get("series")}


def c1(study) -> list[dict]:
    out = []
    d = _pair(study, "red", "sft_then_grpo")
    out.append(_claim("C1a", "RED > SFT→GRPO (overall)", pair_rule(d), _fmt_d(d)))
    pairs = [("sft_then_grpo", "luffy"), ("luffy", "sft"), ("sft", "grpo")]
    ds = [(a, b, _pair(study, a, b)) for a, b in pairs]
    verdicts = [pair_rule(x) for _, _, x in ds]
    v = SUPPORTED if all(x == SUPPORTED for x in verdicts) else REFUTED if REFUTED in verdicts else INCONCLUSIVE
    out.append(_claim("C1b", "SFT→GRPO > LUFFY > SFT > GRPO", v,
                      "; ".join(f"{a} − {b}: {_fmt_d(x)} → {r}" for (a, b, x), r in zip(ds, verdicts))))
    over, easy = _pair(study, "sft", "grpo"), _pair(study, "grpo", "sft", "chain_easy")
    ok = over["n"] >= MIN_SEEDS and over["above"] == over["n"] and easy["below"] == 0 and easy["n"] == over["n"]
    out.append(_claim("C1c", "SFT > GRPO overall, and GRPO ≥ SFT on easy", SUPPORTED if ok else INCONCLUSIVE,
                      f"sft − grpo overall: {_fmt_d(over)}; grpo − sft easy: {_fmt_d(easy)}"))
    return out


def c2(study) -> dict:
    lens = {c: mean(list(metric(study, c, "overall", "len").values())) for c in
            ("sft", "sft_then_grpo", "red", "grpo", "mixpolicy", "red_entropy")}
    if any(v is None for v in lens.values()):
        return _claim("C2", "LEN: SFT > SFT→GRPO > RED > GRPO; MixPolicy, Red(I) ≤ 1.2 × GRPO", INCONCLUSIVE,
                      "missing: " + ", ".join(c for c, v in lens.items() if v is None))
    seeds = set.intersection(*(set(metric(study, c, "overall", "len")) for c in lens))

    def inversions(L):
        order = ["sft", "sft_then_grpo", "red", "grpo"]
        inv = sum(L[a] <= L[b] for a, b in zip(order, order[1:]))
        return inv + sum(L[c] > 1.2 * L["grpo"] for c in ("mixpolicy", "red_entropy"))

    per_seed = [inversions({c: metric(study, c, "overall", "len")[s] for c in lens}) for s in sorted(seeds)]
    inv_mean = inversions(lens)
    v = (SUPPORTED if len(per_seed) >= MIN_SEEDS and all(x == 0 for x in per_seed) else
         REFUTED if inv_mean >= 2 else INCONCLUSIVE)
    return _claim("C2", "LEN: SFT > SFT→GRPO > RED > GRPO; MixPolicy, Red(I) ≤ 1.2 × GRPO", v,
                  "mean LEN " + ", ".join(f"{c} {x:.0f}" for c, x in lens.items())
                  + f"; inversions on the means {inv_mean}, per seed {per_seed}")


def _all_seeds(vals: dict, pred_sup, pred_ref) -> str:
    if not vals:
        return INCONCLUSIVE
    if all(pred_sup(v) for v in vals.values()):
        return SUPPORTED
    if all(pred_ref(v) for v in vals.values()):
        return REFUTED
    return INCONCLUSIVE


def c3(study) -> dict:
    per = {}
    for s, se in _series(study, "sft_then_grpo").items():
        l0, l1 = _window(se["len"], 0.1, last=False), _window(se["len"], 0.1)
        a0, a1 = _window(se["acc"], 0.1, last=False), _window(se["acc"], 0.1)
        if None not in (l0, l1, a0, a1):
            per[s] = (l1 / l0 - 1, a1 - a0)
    v = _all_seeds(per, lambda x: x[0] <= -0.2 and x[1] > 0, lambda x: x[0] > 0 or x[1] < 0)
    return _claim("C3", "Figure 1: over SFT→GRPO's GRPO stage length falls ≥ 20 % and accuracy rises", v,
                  "; ".join(f"seed {s}: length {x[0]:+.0%}, online acc {x[1]:+.3f} (first vs last 10 % of steps)"
                            for s, x in per.items()) or "no GRPO-stage metrics")


def c4(study) -> dict:
    mix = {}
    for s, se in _series(study, "mixpolicy").items():
        ends = [(_window(se[k], 0.1), _window(se[k], 0.1, last=False)) for k in ("h_rl", "h_sft")]
        if all(a is not None and b for a, b in ends):
            mix[s] = [a / b for a, b in ends]
    onp = {}
    for s, se in _series(study, "onpolicy_offline").items():
        acc = [x for x in se["acc"] if x is not None]
        if len(acc) < MIN_STEPS:
            continue
        w = max(1, len(acc) // 10)
        smooth = [mean(acc[i:i + w]) for i in range(0, max(1, len(acc) - w + 1))]
        if smooth:
            peak = max(smooth)
            onp[s] = (peak, smooth[-1], (peak - smooth[-1]) / peak if peak > 0 else 0.0)
    a = bool(mix) and all(r[0] <= 0.7 and r[1] <= 0.7 for r in mix.values())
    b = bool(onp) and all(x[2] >= 0.2 for x in onp.values())
    v = SUPPORTED if a and b else REFUTED if mix and onp and not a and not b else INCONCLUSIVE
    return _claim("C4", "Figure 4: mixpolicy H^rl, H^sft end ≤ 0.7× start; onpolicy_offline accuracy peaks then "
                  "loses ≥ 20 %", v,
                  "mixpolicy end/start H^rl, H^sft: " + (", ".join(f"seed {s}: {r[0]:.2f}, {r[1]:.2f}"
                                                                   for s, r in mix.items()) or "–")
                  + "; onpolicy_offline peak → end online acc: " + (", ".join(
                      f"seed {s}: {x[0]:.3f} → {x[1]:.3f} ({x[2]:.0%} lost)" for s, x in onp.items()) or "–"))


def _c5_holds(se) -> bool | None:
    vals = [_window(se[k], x, last) for k in ("h_rl", "h_sft") for x, last in ((0.1, False), (0.3, True))]
    if None in vals:
        return None
    rl0, rl1, sft0, sft1 = vals
    return rl1 >= rl0 and sft1 >= sft0 and abs(rl1 - sft1) <= 0.2 * max(rl1, sft1)


def c5(study) -> dict:
    got = {c: {s: _c5_holds(se) for s, se in _series(study, c).items()} for c in ("red_shift", "red", "mixpolicy")}
    if not all(got.values()) or any(v is None for d in got.values() for v in d.values()):
        return _claim("C5", "Figure 6a: red_shift and red keep H^rl, H^sft ≥ start and within 20 %; mixpolicy does "
                      "not", INCONCLUSIVE, f"missing runs: {[c for c, d in got.items() if not d]}")
    red_ok = all(all(d.values()) for c, d in got.items() if c != "mixpolicy")
    red_no = all(not any(d.values()) for c, d in got.items() if c != "mixpolicy")
    v = (SUPPORTED if red_ok and not any(got["mixpolicy"].values()) else
         REFUTED if red_no and all(got["mixpolicy"].values()) else INCONCLUSIVE)
    return _claim("C5", "Figure 6a: red_shift and red keep H^rl, H^sft ≥ start and within 20 %; mixpolicy does not",
                  v, "; ".join(f"{c}: " + ", ".join(f"seed {s} {'holds' if x else 'fails'}" for s, x in d.items())
                               for c, d in got.items()))


def c6(study) -> dict:
    def ratio_std(c):
        return {s: mean_std([x for x in se["ratio"][len(se["ratio"]) // 2:] if x is not None])[1]
                for s, se in _series(study, c).items()}

    red, shift = ratio_std("red"), ratio_std("red_shift")
    frozen = [w for se in _series(study, "frozen_w").values() for w in se["w"][1:] if w is not None]
    trained = [w for se in _series(study, "red").values() for w in se["w"][1:] if w is not None]
    seeds = sorted(s for s in red if s in shift and red[s] is not None and shift[s] is not None)
    if not seeds or not frozen or not trained:
        return _claim("C6", "Figure 6b: red's ratio steadier than red_shift's; trained w ≠ frozen-policy w (KS p < .05)",
                      INCONCLUSIVE, "missing red, red_shift or frozen_w metrics")
    lower = all(red[s] < shift[s] for s in seeds)
    d, p = ks_2samp(trained, frozen)
    v = SUPPORTED if lower and p < 0.05 else REFUTED
    return _claim("C6", "Figure 6b: red's ratio steadier than red_shift's; trained w ≠ frozen-policy w (KS p < .05)",
                  v, "std of ΔH^sft/ΔH^rl over the last 50 %: " + ", ".join(
                      f"seed {s} red {red[s]:.2f} vs red_shift {shift[s]:.2f}" for s in seeds)
                  + f"; KS trained w (n={len(trained)}, mean {mean(trained):.2f}) vs frozen w (n={len(frozen)}, "
                    f"mean {mean(frozen):.2f}): D={d:.2f}, p={p:.3g}")


def c7(study) -> dict:
    a, b = _pair(study, "red", "red_shift"), _pair(study, "red_entropy", "mixpolicy")
    ra, rb = pair_rule(a), pair_rule(b)
    small = rb == INCONCLUSIVE or (b["mean"] is not None and abs(b["mean"]) <= 2.0)
    big = rb == SUPPORTED and b["mean"] > 5.0
    v = SUPPORTED if ra == SUPPORTED and small else REFUTED if big or ra == REFUTED else INCONCLUSIVE
    return _claim("C7", "ablation: red > red_shift; red_entropy ≈ mixpolicy", v,
                  f"red − red_shift: {_fmt_d(a)} → {ra}; red_entropy − mixpolicy: {_fmt_d(b)} → {rb}")


def _p(study, c, band, k):
    return mean(list(metric(study, c, band, "pass", k).values()))


def c8(study) -> list[dict]:
    need = [_p(study, c, b, k) for c, b, k in (("grpo", "chain_easy", 1), ("base", "chain_easy", 1),
                                                ("grpo", "chain_medium", 1), ("base", "chain_medium", 1),
                                                ("grpo", "chain_hard", 16), ("base", "chain_hard", 16),
                                                ("sft", "chain_hard", 16), ("red", "chain_hard", 16),
                                                ("grpo", "chain_medium", 16), ("base", "chain_medium", 16))]
    if None in need:
        return [_claim("C8", "recall/extend", INCONCLUSIVE, "missing grpo, sft, red or base evals (n=16)"),
                _claim("C8'", "strict narrowing", INCONCLUSIVE, "missing evals")]
    ge, be, gm, bm, gh, bh, sh, rh, gm16, bm16 = need
    sup = ge > be and gm > bm and gh <= bh + 3 and sh >= 20 and rh >= 20
    v = REFUTED if gh >= 20 else SUPPORTED if sup else INCONCLUSIVE
    why = (f"grpo pass@1 easy {ge:.1f} vs base {be:.1f}, medium {gm:.1f} vs {bm:.1f}; hard pass@16: grpo {gh:.1f}, "
           f"base {bh:.1f}, sft {sh:.1f}, red {rh:.1f}")
    narrow = gm16 < bm16 and gm > bm
    return [_claim("C8", "recall (grpo) vs extend (sft, red)", v, why),
            _claim("C8'", "strict narrowing (Yue et al.)", SUPPORTED if narrow else INCONCLUSIVE,
                   f"grpo medium pass@16 {gm16:.1f} vs base {bm16:.1f}, pass@1 {gm:.1f} vs {bm:.1f} (reported as seen)")]


def c9(study) -> dict:
    w = {c: {st: mean(list(metric(study, c, "overall", "wait", st).values())) for st in
             ("initial", "intermediate", "final")} for c in ("sft", "sft_then_grpo", "red")}
    if any(v is None for d in w.values() for v in d.values()):
        return _claim("C9", "Figure 5: Wait markers by stage", INCONCLUSIVE, "missing sft, sft_then_grpo or red evals")
    s, g, r = w["sft"], w["sft_then_grpo"], w["red"]
    ratio = {st: (r[st] / g[st] if g[st] > 0 else float("inf") if r[st] > 0 else 1.0) for st in r}
    sup = all(g[st] < s[st] for st in s) and ratio["initial"] > 1 and ratio["intermediate"] > 1 and ratio["final"] < 1
    ref = all(g[st] > s[st] for st in s) and ratio["initial"] < 1 and ratio["intermediate"] < 1 and ratio["final"] > 1
    return _claim("C9", "Figure 5: SFT→GRPO below SFT in all stages; red/SFT→GRPO > 1 early, < 1 final",
                  SUPPORTED if sup else REFUTED if ref else INCONCLUSIVE,
                  "Wait per response (initial/intermediate/final): " + "; ".join(
                      f"{c} {d['initial']:.2f}/{d['intermediate']:.2f}/{d['final']:.2f}" for c, d in w.items()))


C10_RL_FALL, C10_SFT_BAND = 0.30, 0.10  # §6.7: grpo's probe H^rl falls >= 30 %, its probe H^sft moves <= 10 %


def _c10_changes(base: dict, grpo: dict, sft: dict) -> dict | None:
    """Relative changes vs the base of grpo's and sft's probe H^rl and H^sft; None if a base entropy is 0."""
    if not (base["h_rl"] > 0 and base["h_sft"] > 0):
        return None
    return {f"{c}_{h}": x[f"h_{h}"] / base[f"h_{h}"] - 1 for c, x in (("grpo", grpo), ("sft", sft))
            for h in ("rl", "sft")}


def _c10_holds(d: dict) -> bool:
    return (d["grpo_rl"] <= -C10_RL_FALL and abs(d["grpo_sft"]) <= C10_SFT_BAND
            and d["sft_rl"] < 0 and d["sft_sft"] < 0)


def c10(study) -> dict:
    """Table 1 analog: grpo's probe H^rl falls >= 30 % vs the base while its probe H^sft changes <= 10 %, and
    sft's probe H^rl and H^sft both fall. Supported when that holds on the seed means and in every seed with all
    three probes (base, grpo, sft of that seed: the base is probed with each seed); refuted when it fails on the
    means and in every such seed; otherwise, or with a probe missing, inconclusive."""
    text = ("Table 1: grpo probe H^rl falls ≥ 30 % vs base while probe H^sft changes ≤ 10 %; sft: both fall "
            "(seed means and every seed)")
    got = {c: probe(study, c) for c in ("base", "grpo", "sft")}
    seeds = sorted(set.intersection(*(set(v) for v in got.values())))
    if not seeds:
        return _claim("C10", text, INCONCLUSIVE, "missing probes: " + ", ".join(
            f"{c} (seeds {sorted(v) or 'none'})" for c, v in got.items()))
    means = {c: {h: mean([v[s][h] for s in seeds]) for h in ("h_rl", "h_sft")} for c, v in got.items()}
    on_means = _c10_changes(means["base"], means["grpo"], means["sft"])
    per = {s: _c10_changes(got["base"][s], got["grpo"][s], got["sft"][s]) for s in seeds}
    if on_means is None or any(d is None for d in per.values()):
        return _claim("C10", text, INCONCLUSIVE, "a base probe entropy is 0: no relative change")
    held = {s: _c10_holds(d) for s, d in per.items()}
    v = (SUPPORTED if _c10_holds(on_means) and all(held.values()) else
         REFUTED if not _c10_holds(on_means) and not any(held.values()) else INCONCLUSIVE)

    def fmt(d):
        return (f"grpo H^rl {d['grpo_rl']:+.0%}, H^sft {d['grpo_sft']:+.0%}; sft H^rl {d['sft_rl']:+.0%}, "
                f"H^sft {d['sft_sft']:+.0%}")

    b = means["base"]
    return _claim("C10", text, v, f"vs base (H^rl {b['h_rl']:.3f}, H^sft {b['h_sft']:.3f} nats), seed means: "
                  f"{fmt(on_means)}; " + "; ".join(f"seed {s}: {'holds' if held[s] else 'fails'}"
                                                   + ("" if len(seeds) == 1 else f" ({fmt(per[s])})")
                                                   for s in seeds))


def scorecard(study: dict) -> list[dict]:
    out = c1(study) + [c2(study), c3(study), c4(study), c5(study), c6(study), c7(study)] + c8(study) + [c9(study)]
    out.append(c10(study))
    return out


__all__ = ["scorecard", "pair_rule", "deltas_vs_red", "MIN_SEEDS"]
