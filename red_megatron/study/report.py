"""The chain study's dated report: the Table 2 analog, paired Δ vs red, pass@k, Wait stages, the Table 1 analog
(probe entropies), the scorecard.

``write_report(out, configs, seeds, report_md, meta, test_path, probe)`` reads whatever cells are finished, so it
is called after every cell (a partial report while the study runs) and once at the end; with ``probe`` (a
``ProbeConfig``) it first computes the finished cells' missing probes (seconds each, cached beside them)."""
from __future__ import annotations

import json
from pathlib import Path

from red_megatron.study.analysis import PASS_KS, STAGES, chance_pass_at_k, mean
from red_megatron.study.claims import MIN_SEEDS, scorecard
from red_megatron.study.collect import deltas_vs_red, load_study, metric, pass_table, probe_table, table_rows
from red_megatron.study.figures import all_figures

BAND_COLS = ("chain_easy", "chain_medium", "chain_hard", "overall")


def _ms(x, fmt=".1f") -> str:
    m, s = x if isinstance(x, tuple) else (x, None)
    if m is None:
        return "–"
    return format(m, fmt) if not s else f"{format(m, fmt)} ± {format(s, fmt)}"


def main_table(rows: list[dict]) -> list[str]:
    head = ["Model", "n"] + [f"{b.removeprefix('chain_').capitalize()} {x}" for b in BAND_COLS for x in ("Acc", "LEN")]
    head += ["trunc %", "replay %", "checks/resp", "rollout tok", "trained tok", "step s", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["config"], str(r["n"])]
        for b in BAND_COLS:
            cells += [_ms(r[f"{b}/acc"]), _ms(r[f"{b}/len"], ".0f")]
        cells += [_ms(r["trunc"]), _ms(r["replay"]), _ms(r["checks"], ".2f"), _ms(r["rollout_tok"], ".3g"),
                  _ms(r["trained_tok"], ".3g"), _ms(r["step_s"], ".0f"), _ms(r["wall_s"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def delta_lines(deltas: dict) -> list[str]:
    out = []
    for c, d in deltas.items():
        if d["n"]:
            out.append(f"- `{c}` {d['mean']:+.1f} ± {d['std']:.1f} ({d['above']}/{d['n']} seeds above red)")
    return out


def passk_lines(passk: dict) -> list[str]:
    ks = [k for k in PASS_KS if any(v.get(k) is not None for d in passk.values() for v in d.values())] or [1]
    head = ["Model", "band"] + [f"pass@{k}" for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * len(ks)) + "|"]
    for c, d in passk.items():
        for band, vals in d.items():
            lines.append("| " + " | ".join([c, band] + [_ms(vals.get(k)) for k in ks]) + " |")
    lines.append("| chance | any | " + " | ".join(f"{chance_pass_at_k(k):.2f}" for k in ks) + " |")
    return lines


def wait_lines(study: dict) -> list[str]:
    lines = ["| Model | " + " | ".join(STAGES) + " |", "|---|" + "---:|" * len(STAGES)]
    for c in study["configs"]:
        vals = [mean(list(metric(study, c, "overall", "wait", st).values())) for st in STAGES]
        if any(v is not None for v in vals):
            lines.append(f"| {c} | " + " | ".join(_ms(v, ".2f") for v in vals) + " |")
    return lines


def probe_lines(rows: list[dict]) -> list[str]:
    """The Table 1 analog: probe H^sft and H^rl (nats) per checkpoint, and their change vs the base's means."""
    if not rows:
        return ["(no probes yet)"]
    base = next((r for r in rows if r["config"] == "base"), None)

    def rel(r, k):
        b = base[k][0] if base else None
        return "–" if not b or r[k][0] is None or r is base else f"{r[k][0] / b - 1:+.0%}"

    lines = ["| Model | checkpoint | n | probe H^sft | probe H^rl | H^sft vs base | H^rl vs base | own sample LEN | "
             "own trunc |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ck = "final" if r["checkpoint"] == "final" else f"{r['checkpoint']} (RL from SFT-N starts here)" \
            if r["config"] == "sft_then_grpo" else r["checkpoint"]
        lines.append(f"| {r['config']} | {ck} | {r['n']} | {_ms(r['h_sft'], '.3f')} | {_ms(r['h_rl'], '.3f')} | "
                     f"{rel(r, 'h_sft')} | {rel(r, 'h_rl')} | {_ms(r['rl_len'], '.0f')} | "
                     f"{_ms(r['rl_truncated'], '.1f')} |")
    return lines


def probe_note(study: dict, meta: dict) -> str:
    st = next((p["settings"] for d in study["cells"].values() for cell in d.values()
               for p in cell.get("probes", {}).values() if "settings" in p), None)
    rows = (f"{st['n_rows']} {'evenly spaced' if st['selection'] == 'spread' else 'first'} `chain_val` rows"
            if st else "fixed `chain_val` rows")
    limit = f"{st['max_response_tokens']} tokens" if st else "the response limit of training"
    failed = meta.get("probe_failed") or []
    return (f"probe H^sft = teacher-forced mean token entropy (nats; full vocabulary, fp32, T=1; per sample the mean "
            f"over its response tokens, EOS included, then the mean over samples) on the teacher traces of {rows}, "
            f"tokenised as training sees them; probe H^rl = the same on the checkpoint's own T=1 samples (transformers "
            f"generate on the CPU, at most {limit}) for the same prompts, seeded by the cell's seed (the base is "
            f"probed with each seed). `vs base` = the relative change of the seed means; own sample LEN / trunc = "
            f"the probe samples' mean length and how many reached the limit."
            + (f" Probes that failed: {'; '.join(failed)}." if failed else ""))


def render(study: dict, meta: dict, figs: dict[str, str], claims: list[dict]) -> str:
    rows = table_rows(study)
    done = sum(len(v) for v in study["cells"].values())
    want = len(study["configs"]) * len(study["seeds"])
    status = "complete" if done >= want else f"PARTIAL: {done} of {want} (config, seed) cells finished"
    ranked = sorted((r for r in rows if r["overall/acc"][0] is not None and r["config"] != "base"),
                    key=lambda r: -r["overall/acc"][0])
    lines = [f"# Chain study: {meta['title']} ({meta['date']})", "", f"Status: **{status}**.", "",
             meta["setup"], "",
             f"## Table 2 analog ({meta.get('eval_name', 'chain_test')}; mean ± std over seeds)", "", *main_table(rows),
             "", "Order by overall accuracy: " + " > ".join(f"{r['config']} ({r['overall/acc'][0]:.1f})"
                                                            for r in ranked), "",
             "Paired Δ overall accuracy vs `red` (same seed; points):", "", *(delta_lines(deltas_vs_red(study))
                                                                             or ["- (no paired seeds yet)"]), "",
             "Overall = the unweighted mean of the three bands (the paper's Avg.). LEN = mean response tokens; "
             "trunc = responses at the 224-token limit; replay = responses holding the teacher's replay sentence; "
             "checks/resp = `Wait, let me check:` per response. Compute: rollout tok = online samples' tokens, "
             "trained tok = online + trace tokens (all from metrics.jsonl), step s = the sum of the steps' rollout, log-prob, train and refit seconds (metrics.jsonl), wall s = the training process with its start-up (sft_then_grpo: both stages, 2× "
             "the steps). G = 3 online + 1 offline: r̄ ∈ {0, ⅓, ⅔, 1} and w ∈ [1, 3].", "",
             "## pass@k (unbiased estimator from n = 16; mean over seeds)", "", *passk_lines(pass_table(study)), "",
             "## Wait markers per response by chain stage (Figure 5 analog)", "", *wait_lines(study), "",
             "## Table 1 analog: probe entropies (STUDY_DESIGN §6.6 item 7; mean ± std over seeds)", "",
             *probe_lines(probe_table(study)), "",
             probe_note(study, meta), "",
             f"## Claim scorecard (STUDY_DESIGN §6.7; paired rules need {MIN_SEEDS} seeds)", "",
             "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {c['id']} {c['claim']} | **{c['verdict']}** | {c['numbers']} |" for c in claims]
    if meta.get("notes"):
        lines += ["", "## Notes", "", meta["notes"].strip()]
    if figs:
        lines += ["", "## Figures", ""] + [f"![{k}]({v})" for k, v in figs.items()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, configs: list[str], seeds: list[int], report_md: Path, meta: dict,
                 test_path: Path | None = None, probe=None) -> dict:
    """Analyse every finished cell of the study at ``out``; write report_md, its .json and PNGs beside it.
    ``probe``: a study.probe.ProbeConfig; the finished cells' missing probes are computed first."""
    probe_failed = []
    if probe is not None:
        from red_megatron.study.probe import ensure_probes

        probe_failed = ensure_probes(out, configs, seeds, probe)
    study = load_study(out, configs, seeds, test_path)
    claims = scorecard(study)
    report_md = Path(report_md)
    figs = all_figures(study, pass_table(study), report_md.parent, report_md.stem)
    report_md.write_text(render(study, {**meta, "probe_failed": probe_failed}, figs, claims))
    summary = {"meta": meta, "configs": study["configs"], "seeds": seeds, "claims": claims,
               "table": table_rows(study), "deltas_vs_red": deltas_vs_red(study), "passk": pass_table(study),
               "probes": probe_table(study), "probe_failed": probe_failed,
               "cells": {c: {str(s): {k: v for k, v in cell.items() if k != "series"} for s, cell in d.items()}
                         for c, d in study["cells"].items()}}
    report_md.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
