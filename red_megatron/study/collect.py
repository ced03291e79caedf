"""Read a chain study directory (red_megatron.study.runner's layout) into per-(config, seed) summaries."""
from __future__ import annotations

import json
from pathlib import Path

from red_megatron.study.analysis import compute_columns, eval_summary, mean, mean_std, paired_delta, read_samples, \
    series
from red_megatron.study.probe import read_probes
from red_megatron.study.runner import cell_dir, preset_of, stage_dirs

ORDER = ("base", "sft", "grpo", "sft_then_grpo", "mixpolicy", "onpolicy_offline", "luffy", "red_entropy",
         "red_shift", "red", "red_wconst", "frozen_w")


def _records(stage: Path) -> list[dict]:
    from red_megatron.metrics import read_metrics

    try:
        return read_metrics(stage)
    except FileNotFoundError:
        return []


def load_cell(out: Path, config: str, seed: int, k_of_row: dict[int, int] | None = None) -> dict | None:
    """The numbers of one finished (config, seed), or None when neither its training nor its eval is done."""
    d = cell_dir(out, config, seed)
    tr = d / "train.done.json"
    ev = d / "eval.done.json"
    if not tr.exists() and not ev.exists():
        return None
    cell: dict = {"config": config, "seed": seed, "train": json.loads(tr.read_text()) if tr.exists() else None}
    if ev.exists():
        cell["eval"] = eval_summary(read_samples(d / "eval" / "samples.jsonl"), k_of_row)
    probes = read_probes(out, config, seed)  # only what is cached; study.probe.ensure_probes computes them
    if probes:
        cell["probes"] = probes
    if config != "base" and tr.exists():
        run = d / "run"
        cfg = json.loads((stage_dirs(run, preset_of(config))[-1] / "run_config.json").read_text())["config"]
        g, b = int(cfg["algo"]["num_online"]), int(cfg["data"]["global_batch_size"])
        stages = [_records(s) for s in stage_dirs(run, preset_of(config))]
        cell["series"] = [series(r) for r in stages]
        cell["compute"] = {**compute_columns(stages, g, b), "wall_s": cell["train"].get("wall_s")}
        cell["setup"] = {"G": g, "B": b, "steps": cfg["steps"], "lr": cfg["policy"]["lr"],
                         "fixed_w": cfg["algo"].get("fixed_w")}
    return cell


def load_study(out: Path, configs: list[str], seeds: list[int], test_path: Path | None = None) -> dict:
    """{'cells': {config: {seed: cell}}, 'configs', 'seeds'}: every finished cell of the study."""
    k_of_row = None
    if test_path is not None and Path(test_path).exists():
        from red_megatron.study.chain_base import val_k_of_row

        k_of_row = val_k_of_row(test_path)
    names = ["base"] + [c for c in ORDER if c in configs and c != "base"] + [c for c in configs if c not in ORDER]
    cells: dict = {}
    for c in names:
        for s in seeds:
            cell = load_cell(Path(out), c, s, k_of_row)
            if cell is not None:
                cells.setdefault(c, {})[s] = cell
    return {"cells": cells, "configs": names, "seeds": list(seeds)}


def metric(study: dict, config: str, band: str, key: str, k: int | None = None) -> dict[int, float | None]:
    """{seed: value} of an eval number (band 'overall' or a band name; key 'acc', 'len', ..., or 'pass' with k)."""
    out = {}
    for s, cell in study["cells"].get(config, {}).items():
        ev = cell.get("eval")
        if ev is None or band not in ev:
            continue
        v = ev[band][key]
        out[s] = v.get(k) if key in ("pass", "wait") else v
    return out


def table_rows(study: dict) -> list[dict]:
    """Table 2 analog rows: mean ± std over seeds of every band's Acc and LEN, and the rate/compute columns."""
    rows = []
    for c in study["configs"]:
        seeds = study["cells"].get(c, {})
        evald = {s: x for s, x in seeds.items() if x.get("eval")}
        if not evald:
            continue
        row: dict = {"config": c, "n": len(evald)}
        for band in ("chain_easy", "chain_medium", "chain_hard", "overall"):
            for key in ("acc", "len"):
                row[f"{band}/{key}"] = mean_std(list(metric(study, c, band, key).values()))
        for key in ("trunc", "replay", "checks"):
            row[key] = mean_std(list(metric(study, c, "overall", key).values()))
        for key in ("rollout_tok", "trained_tok", "step_s", "wall_s"):
            row[key] = mean_std([x.get("compute", {}).get(key) for x in evald.values()])
        rows.append(row)
    return rows


def deltas_vs_red(study: dict, band: str = "overall") -> dict[str, dict]:
    ref = metric(study, "red", band, "acc")
    return {c: paired_delta(metric(study, c, band, "acc"), ref) for c in study["configs"]
            if c not in ("red", "frozen_w", "base") and study["cells"].get(c)}


def pass_table(study: dict) -> dict:
    """{config: {band: {k: mean over seeds}}}."""
    from red_megatron.study.analysis import PASS_KS

    out = {}
    for c in study["configs"]:
        for band in ("chain_easy", "chain_medium", "chain_hard", "overall"):
            vals = {k: mean(list(metric(study, c, band, "pass", k).values())) for k in PASS_KS}
            if any(v is not None for v in vals.values()):
                out.setdefault(c, {})[band] = vals
    return out


def probe(study: dict, config: str, name: str = "final") -> dict[int, dict]:
    """{seed: probe summary (h_sft, h_rl, ...)} of one checkpoint of a config ("final", or a stage's name)."""
    return {s: cell["probes"][name] for s, cell in study["cells"].get(config, {}).items()
            if name in cell.get("probes", {})}


def probe_table(study: dict) -> list[dict]:
    """Table 1 analog rows (§6.6 item 7): mean ± std over seeds of probe H^sft and H^rl, one row a checkpoint;
    a multi-stage preset's earlier stages (sft_then_grpo's SFT stage: where its RL starts) before its final."""
    rows = []
    for c in study["configs"]:
        names = {n for cell in study["cells"].get(c, {}).values() for n in cell.get("probes", {})}
        for name in sorted(names, key=lambda n: (n == "final", n)):
            got = probe(study, c, name)
            rows.append({"config": c, "checkpoint": name, "n": len(got),
                         **{k: mean_std([p.get(k) for p in got.values()]) for k in ("h_sft", "h_rl", "rl_len")},
                         "rl_truncated": mean([p.get("rl_truncated") for p in got.values()])})
    return rows
