"""The scaling study's report (issue 27): every finished cell under ``red-study --sizes``' directory, read from
disk (scaling.json only gives the grid's 1× lr, its multipliers and the sizes' bases; commands on other sizes or
preset subsets merge into it), written as benchmarks/reports/scaling_<date>.md (+ .json, + one figure).

  python -m red_megatron.study.scaling_report --out runs/scaling            # the plan: HEADLINE × seeds 0,1,2
  python -m red_megatron.study.scaling_report --out runs/scaling --report benchmarks/reports/scaling_x.md

Per size: the lr-sensitivity curve of each preset (held-out accuracy and truncated rate against lr, the choice
marked), the main table at equal steps (accuracy per band, LEN, truncated rate, rollout and trained tokens), the
comparison at equal rollout tokens, RED's paired edge over sft_then_grpo, red_shift and phi4_recipe (mean ± SE over
seeds, per band), red's w against the frozen-policy w, and the claims scorecard (red_megatron.study.claims);
every cell of the plan that has not finished is listed. Across sizes (first, with two sizes or more): accuracy,
LEN, RED's edges, w against the frozen-policy w and the scorecard's verdicts, one column a size. The figure:
accuracy per band against size, per preset, and RED's paired edge against size.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import struct
import sys
from pathlib import Path

from red_megatron.study.analysis import BANDS, ks_2samp, mean, mean_std
from red_megatron.study.claims import MIN_SEEDS, pair_rule, scorecard
from red_megatron.study.collect import load_cell, metric, paired_delta, table_rows
from red_megatron.study.runner import CONTROLS
from red_megatron.study.scaling import (HEADLINE, LR_MULTS, VARIANT_PRESETS, VARIANTS, cell_result, choose_lr,
                                        gate_of)

REPO = Path(__file__).resolve().parents[2]
# the issue asks for sft_then_grpo and red_shift; phi4_recipe is the staged recipe RED is compared with too
EDGE_OVER = ("sft_then_grpo", "red_shift", "phi4_recipe")
COLS = (*BANDS, "overall")


def n_params(hf: Path) -> int | None:
    """Parameters of a safetensors checkpoint, from its header (no weights read)."""
    total = 0
    files = sorted(Path(hf).glob("*.safetensors"))
    for f in files:
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for k, v in header.items():
            if k != "__metadata__":
                n = 1
                for d in v["shape"]:
                    n *= d
                total += n
    return total or None


def load_size(out: Path, size: str, presets: list[str], seeds: list[int]) -> dict:
    """One size's main phase as one study (collect.load_study's shape): every preset's directory merged."""
    main = Path(out) / size / "main"
    cells: dict = {}
    tuned = [p for p in presets if p not in CONTROLS]
    for p in tuned:
        configs = [p] + ([c for c in presets if c in CONTROLS] if p == "red" else [])
        for c in configs:
            for s in seeds:
                cell = load_cell(main / p, c, s)
                if cell is not None and (cell.get("eval") or c == "frozen_w"):
                    cells.setdefault(c, {})[s] = cell
    for s in seeds:  # the base is evaluated once, in whichever preset's directory ran first
        for p in tuned:
            cell = load_cell(main / p, "base", s)
            if cell is not None and cell.get("eval"):
                cells.setdefault("base", {})[s] = cell
                break
    return {"cells": cells, "configs": ["base", *presets], "seeds": list(seeds)}


def lr_curves(out: Path, size: str, presets: list[str], mults, lr_seed: int) -> dict:
    return {p: {f"x{m:g}": cell_result(Path(out) / size / "lr" / f"x{m:g}", p, lr_seed) for m in mults}
            for p in presets if p not in CONTROLS}


def missing_cells(study: dict, curves: dict, presets: list[str], seeds: list[int]) -> list[str]:
    miss = [f"lr {p} {k}" for p, c in curves.items() for k, v in c.items() if v is None]
    miss += [f"main {c} seed {s}" for c in ["base", *presets] for s in (seeds if c != "base" else seeds[:1])
             if s not in study["cells"].get(c, {}) and not (c == "base" and study["cells"].get("base"))]
    return miss


def edges(study: dict) -> dict:
    """{other: {band: paired Δ (red − other)}} with the pair rule's verdict on the overall Δ."""
    out = {}
    for other in EDGE_OVER:
        per = {b: paired_delta(metric(study, "red", b, "acc"), metric(study, other, b, "acc")) for b in COLS}
        out[other] = {**per, "verdict": pair_rule(per["overall"])}
    return out


def _online_tokens(cell: dict) -> list[tuple[float, float | None]]:
    """(cumulative rollout tokens, online accuracy) per step over every stage of a cell, in order."""
    g, b = cell["setup"]["G"], cell["setup"]["B"]
    pts, tok = [], 0.0
    for se in cell.get("series", []):
        for ln, acc in zip(se["len"], se["acc"]):
            tok += g * b * ln if ln is not None else 0.0
            if ln is not None:
                pts.append((tok, acc))
    return pts


def equal_tokens(study: dict, window: int = 10) -> dict:
    """The comparison at equal rollout tokens. Budget T = the smallest mean rollout-token total of the RL presets
    (sft has none). Per preset: its online accuracy over the ``window`` steps before T (training samples, all
    stages counted), and the held-out verdict against red where the final checkpoints decide it: a preset that
    used at least red's tokens and scored lower loses at equal tokens too (and the reverse)."""
    rows = {r["config"]: r for r in table_rows(study)}
    tok = {c: r["rollout_tok"][0] for c, r in rows.items() if c != "base" and r["rollout_tok"][0]}
    if not tok:
        return {"budget": None, "rows": {}}
    budget = min(tok.values())
    out = {}
    for c, t in tok.items():
        accs = []
        for cell in study["cells"][c].values():
            pts = [a for x, a in _online_tokens(cell) if x <= budget * (1 + 1e-9) and a is not None]
            if pts:
                accs.append(100.0 * mean(pts[-window:]))
        verdict = "-"
        if c != "red" and "red" in tok and rows[c]["overall/acc"][0] is not None:
            ra, ca = rows["red"]["overall/acc"][0], rows[c]["overall/acc"][0]
            if ra >= ca and tok["red"] <= t:
                verdict = "red ahead with no more tokens"
            elif ca >= ra and t <= tok["red"]:
                verdict = f"{c} ahead with no more tokens"
            else:
                verdict = "undecided (the one ahead used more tokens)"
        out[c] = {"rollout_tok": t, "vs_red_tokens": (t / tok["red"]) if "red" in tok else None,
                  "online_acc_at_budget": mean_std(accs), "held_out": rows[c]["overall/acc"], "verdict": verdict}
    return {"budget": budget, "rows": out}


def w_vs_frozen(study: dict) -> dict:
    trained = [w for c in study["cells"].get("red", {}).values() for se in c.get("series", [])[-1:]
               for w in se["w"][1:] if w is not None]
    frozen = [w for c in study["cells"].get("frozen_w", {}).values() for se in c.get("series", [])[-1:]
              for w in se["w"][1:] if w is not None]
    out = {"red_w": mean_std(trained), "n_red": len(trained), "frozen_w": mean_std(frozen), "n_frozen": len(frozen)}
    if trained and frozen:
        d, p = ks_2samp(trained, frozen)
        out.update(distance=mean(trained) - mean(frozen), ks_d=d, ks_p=p)
    return out


def variants(out: Path, size: str, study: dict, seed: int) -> dict:
    """{variant: {preset: overall acc of its one seed, with the main phase's same seed beside it}} (§6.8)."""
    got = {}
    for name in VARIANTS:
        for p in VARIANT_PRESETS:
            cell = load_cell(Path(out) / size / f"variant_{name}" / p, p, seed)
            if cell is not None and cell.get("eval"):
                main = study["cells"].get(p, {}).get(seed, {}).get("eval")
                got.setdefault(name, {})[p] = {"acc": cell["eval"]["overall"]["acc"],
                                               "hard": cell["eval"]["chain_hard"]["acc"],
                                               "main_acc": main["overall"]["acc"] if main else None}
    return got


def analyse(out: Path, presets=HEADLINE, seeds=(0, 1, 2)) -> dict:
    out = Path(out)
    meta = json.loads((out / "scaling.json").read_text())
    presets, seeds = list(presets), list(seeds)
    mults = meta.get("lr_mults") or list(LR_MULTS)
    sizes = {}
    for size, info in meta["sizes"].items():
        study = load_size(out, size, presets, seeds)
        curves = lr_curves(out, size, presets, mults, meta.get("lr_seed", 0))
        sizes[size] = {"base": info["base"], "gate": gate_line(info["base"]), "params": n_params(Path(info["base"])) if Path(info["base"]).exists()
                       else None, "lr_curve": curves, "lr_choice": {p: choose_lr(c) for p, c in curves.items()},
                       "table": table_rows(study), "edges": edges(study), "equal_tokens": equal_tokens(study),
                       "w": w_vs_frozen(study), "claims": scorecard(study),
                       "variants": variants(out, size, study, meta.get("lr_seed", 0)),
                       "missing": missing_cells(study, curves, presets, seeds)}
    return {"lr_1x": meta["lr_1x"], "lr_mults": mults, "presets": presets, "seeds": seeds, "sizes": sizes}


def _ms(x, fmt=".1f") -> str:
    m, s = x if isinstance(x, (tuple, list)) else (x, None)
    if m is None:
        return "–"
    return f"{m:{fmt}}" + (f" ± {s:{fmt}}" if s is not None else "")


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _d(d: dict) -> str:
    if not d["n"]:
        return "–"
    return f"{d['mean']:+.1f} ± {d['se']:.1f} (n={d['n']}, {d['above']}↑/{d['below']}↓)"


def _by_size(a: dict) -> list[str]:
    return sorted(a["sizes"], key=lambda z: a["sizes"][z]["params"] or 0)


def gate_line(base: str) -> str:
    """The base's §6.4 gate as the report states it: passed, or which check failed (then --allow-failed-gate took
    it), or no gate report (a checkpoint given by path)."""
    g = gate_of(Path(base))
    if g is not None:
        checks = "; ".join(f"{c['name']} {c['value']:.1f} % ({c['rule']}{'' if c['passed'] else ': FAILED'})"
                           for c in g.get("checks", []))
        return ("gate passed" if g.get("passed") else "**gate FAILED, taken with --allow-failed-gate**") + \
            (f": {checks}" if checks else "")
    return "no gate report beside the base"


def _base_name(base: str) -> str:
    """The base by name (chain_base_<key> for a chain base's hf/, else the checkpoint directory's name), not by a
    path of the machine that ran it."""
    p = Path(base)
    return p.parent.name if p.name == "hf" else p.name


def across_sizes(a: dict) -> list[str]:
    """The tables that answer 'what changes with size': accuracy, LEN, RED's edges, w against the frozen w and
    the scorecard's verdicts, one column a size (smallest first)."""
    sizes = _by_size(a)
    if len(sizes) < 2:
        return []
    head = "| | " + " | ".join(f"`{z}` ({a['sizes'][z]['params'] / 1e6:.2f}M)" if a["sizes"][z]["params"] else f"`{z}`"
                               for z in sizes) + " |"
    rule = "|---|" + "---:|" * len(sizes)

    def row_of(z: str, p: str) -> dict | None:
        return next((r for r in a["sizes"][z]["table"] if r["config"] == p), None)

    L = ["## Across sizes", "", "Held-out accuracy % on chain_test, overall (hard band in brackets), mean ± std over "
         "seeds (n), each preset at its own lr:", "", head, rule]
    for p in ["base", *a["presets"]]:
        cells = []
        for z in sizes:
            r = row_of(z, p)
            cells.append("–" if r is None else f"{_ms(r['overall/acc'] if r['n'] > 1 else r['overall/acc'][0])} "
                                               f"({_ms(r['chain_hard/acc'][0])}) (n={r['n']})")
        if any(c != "–" for c in cells):
            L.append(f"| {p} | " + " | ".join(cells) + " |")
    L += ["", "LEN (mean response tokens on chain_test, mean over seeds) and truncated %:", "", head, rule]
    for p in ["base", *a["presets"]]:
        cells = [("–" if (r := row_of(z, p)) is None else f"{_ms(r['overall/len'][0], '.0f')} / {_ms(r['trunc'][0])} %")
                 for z in sizes]
        if any(c != "–" for c in cells):
            L.append(f"| {p} | " + " | ".join(cells) + " |")
    L += ["", "RED's paired edge, overall (red − other, points, mean ± SE over paired seeds; verdict by the C1a rule), "
          "and red's w against the frozen-policy w:", "", head, rule]
    for other in EDGE_OVER:
        cells = []
        for z in sizes:
            e = a["sizes"][z]["edges"][other]
            cells.append("–" if not e["overall"]["n"] else f"{_d(e['overall'])} **{e['verdict']}**")
        L.append(f"| red − {other} | " + " | ".join(cells) + " |")
    cells = []
    for z in sizes:
        w = a["sizes"][z]["w"]
        cells.append(f"{w['distance']:+.3f} (KS p={w['ks_p']:.2g})" if "distance" in w else
                     ("red's " + _ms(w["red_w"], ".2f") + "; frozen_w not run") if w["n_red"] else "–")
    L += ["| red's w − frozen w | " + " | ".join(cells) + " |", "",
          "The claims scorecard per size (verdicts; the numbers are in each size's section):", "", head, rule]
    ids = [c["id"] for c in a["sizes"][sizes[0]]["claims"]]
    for cid in ids:
        claim = next(c for c in a["sizes"][sizes[0]]["claims"] if c["id"] == cid)["claim"]
        cells = [next((c["verdict"] for c in a["sizes"][z]["claims"] if c["id"] == cid), "–") for z in sizes]
        L.append(f"| {cid} {claim} | " + " | ".join(cells) + " |")
    return L + [""]


def render(a: dict, meta: dict, figure: str | None) -> str:
    L = [f"# Scaling study: RED across model sizes ({meta['date']})", "", meta["setup"], ""]
    L += across_sizes(a)
    if figure:
        L += [f"![accuracy per band and RED's edge against size]({figure})", ""]
    for size in _by_size(a):
        s = a["sizes"][size]
        params = f"{s['params'] / 1e6:.2f}M parameters" if s["params"] else "parameters unknown"
        L += [f"## Size `{size}` ({params}; base `{_base_name(s['base'])}`)", "", f"Base: {s['gate']}.", ""]
        L += [("**Missing cells** (not run yet): " + ", ".join(s["missing"])) if s["missing"]
              else "All cells of the plan finished.", ""]
        L += [f"### lr sensitivity (chain_val, seed {meta.get('lr_seed', 0)}): held-out accuracy % (truncated %)", "",
              "| preset | " + " | ".join(f"{m:g}× ({a['lr_1x'] * m:g})" for m in a["lr_mults"]) + " | choice |",
              "|---|" + "---:|" * (len(a["lr_mults"]) + 1)]
        for p, c in s["lr_curve"].items():
            ch = s["lr_choice"][p]
            cells = [("–" if v is None else f"{v['acc']:.1f} ({v['trunc']:.1f})") + (" ◀" if ch == float(k[1:]) else "")
                     for k, v in c.items()]
            L.append(f"| {p} | " + " | ".join(cells) + f" | {'–' if ch is None else f'{ch:g}×'} |")
        L += ["", "### Equal steps (chain_test; mean ± std over seeds; each preset at its chosen lr)", "",
              "| preset | n | " + " | ".join(f"{b.removeprefix('chain_')} acc" for b in COLS)
              + " | LEN | trunc % | rollout tok | trained tok |", "|---|---:|" + "---:|" * (len(COLS) + 4)]
        for r in s["table"]:
            r = {k: (v[0] if r["n"] < 2 and isinstance(v, tuple) else v) for k, v in r.items()}  # no std of one seed
            L.append(f"| {r['config']} | {r['n']} | " + " | ".join(_ms(r[f'{b}/acc']) for b in COLS)
                     + f" | {_ms(r['overall/len'], '.0f')} | {_ms(r['trunc'])} | {_ms(r['rollout_tok'], '.3g')} | "
                       f"{_ms(r['trained_tok'], '.3g')} |")
        et = s["equal_tokens"]
        L += ["", "### Equal rollout tokens", ""]
        if et["budget"] is None:
            L += ["(no RL cell finished yet)"]
        else:
            L += [f"Budget: {et['budget']:.3g} rollout tokens (the smallest RL preset's total; staged presets' "
                  f"stages summed).", "", "| preset | rollout tok | ÷ red's | online acc % at the budget | "
                  "held-out acc % | held-out verdict at equal tokens |", "|---|---:|---:|---:|---:|---|"]
            for c, r in et["rows"].items():
                L.append(f"| {c} | {r['rollout_tok']:.3g} | {_ms(r['vs_red_tokens'], '.2f')} | "
                         f"{_ms(r['online_acc_at_budget'])} | {_ms(r['held_out'])} | {r['verdict']} |")
        L += ["", f"### RED's paired edge (red − other, points, mean ± SE over paired seeds; rule: {MIN_SEEDS} seeds, "
                  "every seed above and mean > 2 SE)", "",
              "| over | " + " | ".join(b.removeprefix("chain_") for b in COLS) + " | verdict |",
              "|---|" + "---:|" * len(COLS) + "---|"]
        for other, e in s["edges"].items():
            L.append(f"| {other} | " + " | ".join(_d(e[b]) for b in COLS) + f" | {e['verdict']} |")
        w = s["w"]
        L += ["", "### w against the frozen-policy w", "",
              f"red's w (steps 2+, every seed): {_ms(w['red_w'], '.3f')} (n={w['n_red']}); frozen-policy w: "
              + (f"{_ms(w['frozen_w'], '.3f')} (n={w['n_frozen']}); distance {w['distance']:+.3f}, "
                 f"KS D={w['ks_d']:.2f}, p={w['ks_p']:.3g}" if "distance" in w else
                 "**not run at this size** (the frozen_w control: red at lr 1e-12 for 30 steps)"), "",
              "### Claims scorecard (on the tuned comparison; claims about presets outside the plan, e.g. luffy, "
              "mixpolicy, red_entropy, are inconclusive by design)", "", "| claim | verdict | numbers |", "|---|---|---|"]
        L += [f"| {c['id']} {c['claim']} | **{c['verdict']}** | {c['numbers']} |" for c in s["claims"]]
        L += ["", "### Premise-off variants (STUDY_DESIGN §6.8; one seed, overall acc %, the main phase's same seed "
                  "in brackets; hard band after the slash)", ""]
        if not s["variants"]:
            L += [f"**Not run at this size** (`red-study --sizes {size} --phase variants`)."]
        else:
            L += ["| variant | " + " | ".join(VARIANT_PRESETS) + " |", "|---|" + "---:|" * len(VARIANT_PRESETS)]
            for name, row in s["variants"].items():
                L.append(f"| {name} | " + " | ".join(
                    "–" if p not in row else f"{row[p]['acc']:.1f} [{_ms(row[p]['main_acc'])}] / {row[p]['hard']:.1f}"
                    for p in VARIANT_PRESETS) + " |")
        L.append("")
    return "\n".join(L)


def figure(a: dict, path: Path) -> Path | None:
    """Accuracy (mean ± std over seeds) per band against size, one line per preset."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = _by_size(a)
    if not sizes:
        return None
    x = [(a["sizes"][z]["params"] or i + 1) / 1e6 for i, z in enumerate(sizes)]
    fig, axes = plt.subplots(1, len(COLS) + 1, figsize=(4 * (len(COLS) + 1), 3.4))
    for ax, band in zip(axes, COLS):
        for i, p in enumerate(["base", *a["presets"]]):
            rows = [next((r for r in a["sizes"][z]["table"] if r["config"] == p), None) for z in sizes]
            nudge = 1.025 ** (i - len(a["presets"]) / 2)  # presets side by side at each size, not on top of each other
            pts = [(xi * nudge, r[f"{band}/acc"]) for xi, r in zip(x, rows) if r and r[f"{band}/acc"][0] is not None]
            if pts:
                ax.errorbar([q[0] for q in pts], [q[1][0] for q in pts], yerr=[q[1][1] or 0 for q in pts],
                            marker="o", capsize=3, label=p)
        ax.set_title(band.removeprefix("chain_"))
        ax.set_xscale("log")
        ax.set_ylim(-3, 103)
    axes[0].set_ylabel("held-out accuracy %")
    axes[len(COLS) - 1].legend(fontsize=7)
    ax = axes[-1]  # RED's paired edge, mean ± SE over seeds
    for i, other in enumerate(EDGE_OVER):
        pts = [(xi * 1.03 ** i, a["sizes"][z]["edges"][other]["overall"]) for xi, z in zip(x, sizes)]
        pts = [(xi, d) for xi, d in pts if d["n"]]
        if pts:
            ax.errorbar([q[0] for q in pts], [q[1]["mean"] for q in pts], yerr=[q[1]["se"] or 0 for q in pts],
                        marker="s", capsize=3, label=f"red − {other}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_title("RED's paired edge (overall)")
    ax.set_ylabel("points")
    ax.legend(fontsize=7)
    lo, hi = min(x) / 1.5, max(x) * 1.5
    for ax in axes:  # one tick a size, named
        ax.set_xlim(lo, hi)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{z}\n{xi:.2f}M" for z, xi in zip(sizes, x)])
        ax.minorticks_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(out: Path, report: Path, presets=HEADLINE, seeds=(0, 1, 2), setup: str | None = None) -> dict:
    a = analyse(out, presets, seeds)
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    fig = figure(a, report.with_suffix(".png"))
    meta = {"date": datetime.date.today().isoformat(),
            "setup": setup or f"CPU: {_cpu()}, {os.cpu_count()} cores, one thread "
                              f"a process. Plan: presets {', '.join(a['presets'])}; seeds {a['seeds']}; lr grid "
                              f"{', '.join(f'{m:g}×' for m in a['lr_mults'])} of {a['lr_1x']:g}."}
    report.write_text(render(a, meta, fig.name if fig else None))
    report.with_suffix(".json").write_text(json.dumps(a, indent=1, default=str))
    return a


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scaling-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/scaling", help="the study's directory (holds scaling.json)")
    ap.add_argument("--report", default=None, help="default benchmarks/reports/scaling_<date>.md")
    ap.add_argument("--presets", default=",".join(HEADLINE), help="the plan's presets (missing cells are listed)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--setup", default=None, help="the report's setup paragraph (default: CPU and plan)")
    args = ap.parse_args(argv)
    if not (Path(args.out) / "scaling.json").is_file():
        print(f"error: --out {args.out}: no scaling.json there (run red-study --sizes first)", file=sys.stderr)
        return 2
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        print(f"error: --seeds={args.seeds!r}: expected comma-separated integers", file=sys.stderr)
        return 2
    report = Path(args.report or REPO / "benchmarks" / "reports" / f"scaling_{datetime.date.today().isoformat()}.md")
    a = write(Path(args.out), report, [p.strip() for p in args.presets.split(",") if p.strip()], seeds, args.setup)
    left = ", ".join(f"{z}: {len(s['missing'])} cells missing" for z, s in a["sizes"].items())
    print(f"[scaling-report] {report} ({left})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
