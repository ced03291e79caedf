"""The chain study's analysis on hand-made inputs with known answers (pass@k, sign counts, Wait stages, the
claim rules, the report from files), its resumability with stand-in processes, and SFT→GRPO's per-token loss
weights under DP sharding and micro-batching."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from red_megatron.study import analysis as an
from red_megatron.study import claims as cl
from red_megatron.study import runner


def test_pass_at_k_matches_the_closed_form_and_chance_line():
    # one problem 4/16 right, one 0/16: pass@k = mean(1 − C(12,k)/C(16,k), 0)
    samples = [{"problem": p, "reward": float(p == 0 and i < 4), "length": 5, "truncated": False, "response": ""}
               for p in (0, 1) for i in range(16)]
    b = an.band_summary(samples)
    for k in (1, 2, 4, 8, 16):
        assert b["pass"][k] == pytest.approx(100 * (1 - math.comb(12, k) / math.comb(16, k)) / 2)
    assert 32 not in b["pass"]  # k > n is never estimated
    assert b["acc"] == pytest.approx(100 * (4 / 16) / 2) and b["n"] == 16
    assert an.chance_pass_at_k(1) == pytest.approx(100 / 900)
    assert an.chance_pass_at_k(16) == pytest.approx(100 * (1 - (899 / 900) ** 16))
    with pytest.raises(ValueError, match="different sample counts"):
        an.band_summary(samples[:-1])


def test_rates_and_wait_stages_of_a_teacher_like_response():
    chk = "Wait, let me check: 3 + 2 ends in 5. Yes,"
    text = (f"Okay. 4|372 3|725 {chk} 3|725 2|252 1|520 {chk} 1|520 0|205 {an.REPLAY} 4|372 3|725 2|252 1|520 "
            r"0|205 So the answer is 205. \boxed{205}")
    st = an.wait_stages(text)
    # 5 first-pass lines (4..0; a check's restated line is not new): the check after line #1 (3|) falls in
    # third 1*3//5 = 0 (initial), the one after line #3 (1|) in 3*3//5 = 1 (intermediate); the replay: final
    assert st == {"open": 0, "initial": 1, "intermediate": 1, "final": 1}
    assert an.wait_stages("Wait, 3|123 0|555") == {"open": 1, "initial": 0, "intermediate": 0, "final": 0}
    rows = [{"problem": 0, "reward": 1.0, "length": 100, "truncated": False, "response": text, "data_source":
             "chain_easy", "row": 0},
            {"problem": 0, "reward": 0.0, "length": 224, "truncated": True, "response": "4|372", "data_source":
             "chain_easy", "row": 0}]
    s = an.eval_summary(rows, {0: 4})
    assert s["chain_easy"]["trunc"] == 50.0 and s["chain_easy"]["replay"] == 50.0
    assert s["chain_easy"]["checks"] == 1.0 and s["overall"]["len"] == 162.0
    assert s["by_k"][4]["acc"] == 50.0
    with pytest.raises(ValueError, match="no sample of the bands"):
        an.eval_summary([{**rows[0], "data_source": "other"}])


def test_paired_delta_sign_counts_and_the_pair_rule():
    d = an.paired_delta({0: 5.0, 1: -1.0, 2: 3.0, 3: 9.0}, {0: 1.0, 1: 0.0, 2: 1.0})
    assert d["seeds"] == [0, 1, 2] and d["deltas"] == [4.0, -1.0, 2.0]
    assert (d["above"], d["below"], d["n"]) == (2, 1, 3)
    assert d["mean"] == pytest.approx(5 / 3) and d["std"] == pytest.approx(math.sqrt(((7 / 3) ** 2 + (8 / 3) ** 2
                                                                                       + (1 / 3) ** 2) / 2))
    assert cl.pair_rule(d) == cl.INCONCLUSIVE
    up = an.paired_delta({0: 5.0, 1: 6.0, 2: 5.5}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert cl.pair_rule(up) == cl.SUPPORTED
    noisy = an.paired_delta({0: 0.1, 1: 20.0, 2: 0.1}, {0: 0.0, 1: 0.0, 2: 0.0})  # all above, mean < 2 SE
    assert cl.pair_rule(noisy) == cl.INCONCLUSIVE
    assert cl.pair_rule(an.paired_delta({0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 2.0, 2: 3.0})) == cl.REFUTED
    two = an.paired_delta({0: 5.0, 1: 6.0}, {0: 1.0, 1: 1.0})  # 2 seeds: inconclusive by design
    assert cl.pair_rule(two) == cl.INCONCLUSIVE


def test_ks_two_sample():
    d, p = an.ks_2samp([1.0] * 30, [3.0] * 30)
    assert d == 1.0 and p < 1e-6
    d, p = an.ks_2samp([1.0, 2.0, 3.0] * 10, [1.0, 2.0, 3.0] * 10)
    assert d == 0.0 and p == 1.0


def _band(acc, length, p16=None):
    return {"acc": acc, "len": length, "trunc": 0.0, "replay": 0.0, "checks": 0.0,
            "wait": dict.fromkeys(an.STAGES, 0.0), "pass": {1: acc, 16: acc if p16 is None else p16}}


def _cell(acc, length=50.0, hard16=None, h=None):
    bands = {"chain_easy": _band(acc, length), "chain_medium": _band(acc, length),
             "chain_hard": _band(acc, length, hard16)}
    ev = {**bands, "overall": {"acc": acc, "len": length, "trunc": 0.0, "replay": 0.0, "checks": 0.0,
                               "wait": dict.fromkeys(an.STAGES, 0.0), "pass": {1: acc, 16: acc}}}
    return {"eval": ev, "series": [h] if h else []}


def test_scorecard_rules_on_a_synthetic_study():
    seeds = [0, 1, 2]
    accs = {"red": 40, "sft_then_grpo": 30, "luffy": 25, "sft": 20, "grpo": 10, "base": 5, "red_shift": 39,
            "mixpolicy": 20, "red_entropy": 21}
    lens = {"sft": 120, "sft_then_grpo": 90, "red": 70, "grpo": 50, "mixpolicy": 55, "red_entropy": 58}
    study = {"seeds": seeds, "configs": list(accs), "cells": {
        c: {s: _cell(a + s * 0.5 if c != "red_shift" else a - s, lens.get(c, 50), hard16=30 if c in
                     ("sft", "red") else 2) for s in seeds} for c, a in accs.items()}}
    card = {c["id"]: c for c in cl.scorecard(study)}
    assert card["C1a"]["verdict"] == cl.SUPPORTED and "3/3 seeds above" in card["C1a"]["numbers"]
    assert card["C1b"]["verdict"] == cl.SUPPORTED and card["C2"]["verdict"] == cl.SUPPORTED
    assert card["C8"]["verdict"] == cl.SUPPORTED and card["C10"]["verdict"] == cl.INCONCLUSIVE
    assert card["C3"]["verdict"] == cl.INCONCLUSIVE  # no per-step series in this study
    # reversed: SFT→GRPO above RED in every seed refutes C1a; two seeds only: inconclusive
    for s in seeds:
        study["cells"]["sft_then_grpo"][s]["eval"]["overall"]["acc"] = 60 + s
    assert {c["id"]: c for c in cl.scorecard(study)}["C1a"]["verdict"] == cl.REFUTED
    for c in study["cells"].values():
        c.pop(2)
    assert {c["id"]: c for c in cl.scorecard(study)}["C1a"]["verdict"] == cl.INCONCLUSIVE
    # grpo reaching hard pass@16 >= 20 refutes C8 (RL did extend)
    study["cells"]["grpo"][0]["eval"]["chain_hard"]["pass"][16] = 50.0
    study["cells"]["grpo"][1]["eval"]["chain_hard"]["pass"][16] = 50.0
    assert {c["id"]: c for c in cl.scorecard(study)}["C8"]["verdict"] == cl.REFUTED


def test_figure1_claim_from_step_series():
    n = 40
    falls = {"len": [100 - 1.5 * i for i in range(n)], "acc": [0.2 + 0.01 * i for i in range(n)]}
    rises = {"len": [50 + i for i in range(n)], "acc": [0.5] * n}
    for se, verdict in ((falls, cl.SUPPORTED), (rises, cl.REFUTED)):
        study = {"seeds": [0], "configs": ["sft_then_grpo"], "cells": {"sft_then_grpo": {0: {"series": [se]}}}}
        assert cl.c3(study)["verdict"] == verdict


def _fake_files(out: Path, config: str, seed: int, acc: float, steps: int = 12, offline: bool = True):
    """A finished cell as the runner leaves it: markers, metrics.jsonl, run_config.json, eval samples."""
    d = runner.cell_dir(out, config, seed)
    stage = runner.final_stage_dir(d / "run", runner.preset_of(config)) if config != "base" else None
    if stage is not None:
        stage.mkdir(parents=True)
        (stage / "run_config.json").write_text(json.dumps({"config": {
            "algo": {"num_online": 3, "fixed_w": None}, "data": {"global_batch_size": 8}, "steps": steps,
            "policy": {"lr": 5e-4}}}))
        with open(stage / "metrics.jsonl", "w") as f:
            for i in range(1, steps + 1):
                f.write(json.dumps({"step": i, "response/online_mean_length": 10.0, "response/offline_mean_length":
                                    20.0 if offline else "nan", "entropy/h_rl": 1.0 + 0.1 * i, "entropy/h_sft": 0.5,
                                    "red/w": 1.5, "time/train": 1.0, "reward/online_accuracy": 0.5}) + "\n")
    (d / "eval").mkdir(parents=True, exist_ok=True)
    with open(d / "eval" / "samples.jsonl", "w") as f:
        for row, band in enumerate(an.BANDS):
            for i in range(4):
                f.write(json.dumps({"row": row, "problem": row, "data_source": band, "reward": float(i < acc * 4),
                                    "length": 30, "truncated": False, "response": "1|123 0|234"}) + "\n")
    (d / "train.done.json").write_text(json.dumps({"rc": 0, "wall_s": 12.5}))
    (d / "eval.done.json").write_text(json.dumps({"rc": 0}))


def test_report_from_hand_made_files(tmp_path):
    from red_megatron.study.report import write_report

    out = tmp_path / "study"
    for s in (0, 1):
        _fake_files(out, "base", s, 0.25)
        _fake_files(out, "red", s, 0.75)
        _fake_files(out, "grpo", s, 0.5 if s == 0 else 1.0, offline=False)
    md = tmp_path / "rep" / "chain_study_t.md"
    md.parent.mkdir()
    summary = write_report(out, ["base", "grpo", "red", "sft"], [0, 1], md, {"title": "t", "date": "d", "setup": "s"})
    text = md.read_text()
    assert "PARTIAL: 6 of 8" in text  # sft never ran
    row = next(r for r in summary["table"] if r["config"] == "red")
    assert row["overall/acc"] == (75.0, 0.0) and row["n"] == 2
    g = next(r for r in summary["table"] if r["config"] == "grpo")
    assert g["overall/acc"][0] == 75.0 and g["overall/acc"][1] == pytest.approx(math.sqrt(2) * 25)
    # compute: 12 steps × 3 × 8 × 10 rollout tokens; trained adds 8 × 20 a step for red only
    assert row["rollout_tok"][0] == 2880 and row["trained_tok"][0] == 2880 + 12 * 160 and g["trained_tok"][0] == 2880
    assert row["wall_s"][0] == 12.5
    d = summary["deltas_vs_red"]["grpo"]
    assert (d["above"], d["below"], d["n"]) == (1, 1, 2) and d["mean"] == 0.0
    assert "`grpo` +0.0 ± 35.4 (1/2 seeds above red)" in text and "`base`" not in text.split("Paired")[1].split("##")[0]
    assert json.loads(md.with_suffix(".json").read_text())["claims"][0]["id"] == "C1a"
    assert (md.parent / "chain_study_t_passk.png").exists() and "## Claim scorecard" in text


def test_a_killed_study_resumes_and_skips_finished_cells(tmp_path, monkeypatch):
    """Stand-in processes: the second cell's training is 'killed'; the rerun runs only what was unfinished."""
    calls = []

    def fake_run(cmd, log_path):
        name = Path(log_path).parent.name
        kind = Path(log_path).stem
        if getattr(fake_run, "killed", False) and not getattr(fake_run, "resumed", False):
            raise KeyboardInterrupt  # the study's process is gone: nothing else runs
        calls.append((name, kind))
        if kind == "train":
            run_dir = Path(cmd[cmd.index("--run-dir") + 1])
            if name == "grpo" and not getattr(fake_run, "resumed", False):
                run_dir.mkdir(parents=True)
                (run_dir / "half.pt").write_text("partial")
                fake_run.killed = True
                raise KeyboardInterrupt  # the study is stopped mid-training
            assert not (run_dir / "half.pt").exists(), "a partial run must be started from scratch"
            stage = runner.final_stage_dir(run_dir, "grpo" if name == "grpo" else "red")
            (stage / "hf").mkdir(parents=True)
            (stage / "metrics.jsonl").write_text(json.dumps({"step": 1, "red/w": 1.25}) + "\n"
                                                 + json.dumps({"step": 2, "red/w": 2.75}) + "\n")
            if name == "red_wconst":
                assert "algo.fixed_w=2.000000" in cmd
        else:
            out = Path(cmd[cmd.index("--out") + 1])
            (out / "samples.jsonl").write_text("")
        return 0, 0.1

    monkeypatch.setattr(runner, "_run_logged", fake_run)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    data = tmp_path / "test.parquet"
    data.write_text("")
    spec = runner.StudySpec(out=tmp_path / "out", base=base, configs=["red", "grpo", "red_wconst"], seeds=[0],
                            eval_data=str(data), parallel=1)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(spec, log=lambda *_: None)
    assert ("red", "train") in calls and ("red", "eval") in calls
    assert (tmp_path / "out/seed0/red/eval.done.json").exists()
    assert not (tmp_path / "out/seed0/grpo/train.done.json").exists()
    assert not (tmp_path / "out/seed0/red_wconst/train.done.json").exists()
    calls.clear()
    fake_run.resumed = True
    res = runner.run_study(spec, log=lambda *_: None)
    assert ("red", "train") not in calls and ("base", "eval") not in calls  # finished: skipped
    assert ("grpo", "train") in calls and ("red_wconst", "train") in calls
    assert all(r["train"]["rc"] == 0 for r in res)
    # a resume with another base would mix two studies: refused
    other = tmp_path / "base2"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a study with other"):
        runner.run_study(runner.StudySpec(**{**spec.__dict__, "base": other}), log=lambda *_: None)
    with pytest.raises(ValueError, match="red_wconst needs red"):
        runner.StudySpec(**{**spec.__dict__, "configs": ["red_wconst"]}).validate()


def _terms_weight(obj, rewards, gid, off, lens, P, N):
    terms, _, _ = obj.token_terms(rewards, gid, off, lens, w=1.0, num_prompts=P, total_tokens=N)
    return terms


@pytest.mark.parametrize("stage_index", [0, 1])
def test_sft_then_grpo_weights_do_not_depend_on_dp_size_or_micro_batches(stage_index):
    """Both stages of the SFT→GRPO baseline (token-mean SFT, sequence-mean GRPO) build their per-token weights
    from the global counts, as every preset does: the same weight for a token at DP 1, 2 or 4 and in any
    micro-batch, each stage's weights sum to 1 over the global batch, and micro-batch losses sum to the loss."""
    from red_megatron.algo import AlgoConfig, build_objective, group_layout, red_token_loss
    from red_megatron.algo.presets import preset_stages

    cfg = AlgoConfig(preset="sft_then_grpo", num_online=3)
    stage = preset_stages("sft_then_grpo")[stage_index]
    obj = build_objective(cfg, stage)
    P, G = 8, 3 if stage.online else 0
    gid, off = group_layout(P, G, with_offline=stage.with_offline)
    g = torch.Generator().manual_seed(stage_index)
    B = gid.numel()
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    lens = torch.randint(1, 9, (B,), generator=g)
    N = int(lens.sum())
    full = _terms_weight(obj, rewards, gid, off, lens, P, N)
    assert float(full.weight_N.double().sum()) == pytest.approx(1.0, abs=1e-6)
    per = G + int(stage.with_offline)
    for dp in (2, 4):
        parts = []
        for r in range(dp):
            s = slice(r * B // dp, (r + 1) * B // dp)  # whole groups per rank
            local_gid = gid[s] - gid[s].min()
            parts.append(_terms_weight(obj, rewards[s], local_gid, off[s], lens[s], P, N).weight_N)
        assert torch.equal(torch.cat(parts), full.weight_N), f"DP={dp} changed the per-token weights"
        assert B % (dp * per) == 0
    logp = torch.log(torch.rand(N, dtype=torch.float64, generator=g) * 0.9 + 0.05)
    old = logp + 0.1 * torch.randn(N, dtype=torch.float64, generator=g)

    def loss(t, idx=None):
        lp, lo = (logp, old) if idx is None else (logp[idx], old[idx])
        return red_token_loss(lp, lo, None, t.kind_N, t.adv_N, t.rbar_N, t.w_N, t.weight_N, **obj.loss_kwargs()).loss

    for cuts in ([N // 2], [3, 7, N - 2]):  # micro-batches of tokens, cut anywhere (TokenTerms.select)
        edges = [0, *cuts, N]
        total = sum(float(loss(full.select(torch.arange(a, b)), torch.arange(a, b))) for a, b in zip(edges, edges[1:]))
        assert total == pytest.approx(float(loss(full)), rel=1e-9)


def test_script_refuses_bad_input_and_ranks_failed_bases(tmp_path, capsys, monkeypatch):
    import red_megatron.study.assets
    from red_megatron.study import chain_study as mod

    assert mod.main(["--gpu"]) == 2 and "--gpu needs --base" in capsys.readouterr().err
    assert mod.main(["--base", str(tmp_path), "--analyze-only"]) == 2
    assert "not an HF checkpoint directory" in capsys.readouterr().err
    gate = {"checks": [{"name": "easy (k<=3) greedy", "value": 96.9}, {"name": "k=4 pass@1 (T=1)", "value": 89.6},
                       {"name": "k>=6 pass@32 (T=1)", "value": 0.8}]}
    assert mod.gate_distance(gate) == pytest.approx(4.6)
    gate["checks"][1]["value"] = 12.6
    gate["checks"][2]["value"] = 5.0
    assert mod.gate_distance(gate) == pytest.approx(17.4 + 2.0)
    monkeypatch.setattr(red_megatron.study.assets, "ensure_chain_data", lambda task: {"train": "T", "test": f"w{task.width}"})
    ov = mod.gpu_overrides(300)
    assert "data.path=T" in ov and "eval.data_path=w4" in ov
    assert "algo.num_online=7" in ov and "data.global_batch_size=64" in ov and "policy.min_lr_ratio=0.1" in ov


def test_fixed_w_holds_w_while_the_regulator_still_updates():
    from red_megatron.algo import AlgoConfig, EntropyStats, build_objective

    obj = build_objective(AlgoConfig(preset="red", num_online=3, fixed_w=1.7))
    assert obj.offline_weight(EntropyStats(h_rl=1.0, h_sft=1.0)) == 1.7
    assert obj.offline_weight(EntropyStats(h_rl=0.5, h_sft=2.0)) == 1.7  # Eq. 9 would give 1.0 / 0.5 = 2
    assert obj.regulator.num_updates == 2 and obj.regulator.last_w == 2.0
    assert build_objective(AlgoConfig(preset="red", num_online=3)).fixed_w is None
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="fixed_w"):
            AlgoConfig(preset="red", fixed_w=bad)


def test_a_failed_cell_says_why_in_the_study_log(tmp_path, monkeypatch):
    """A child's refusal (its one ``error:`` line, after whatever it printed) reaches the study's own log, with the
    cell's log path; the real child process runs (a stand-in command: a real training would need minutes)."""
    child = [sys.executable, "-c", "import sys; print('INFO noise'); print('error: bad row 3 in data.path: expected "
             "a prompt', file=sys.stderr); print('more noise'); sys.exit(2)"]
    monkeypatch.setattr(runner, "train_command", lambda *a, **k: child)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    spec = runner.StudySpec(out=tmp_path / "out", base=base, configs=["grpo"], seeds=[0], eval_data="x", parallel=1)
    lines = []
    res = runner.train_cell(spec, "grpo", 0, log=lines.append)
    assert res["rc"] == 2 and not (tmp_path / "out/seed0/grpo/train.done.json").exists()
    assert lines[-1].startswith("[study] seed 0 grpo: train FAILED (rc=2) in ")
    assert lines[-1].endswith(f"error: bad row 3 in data.path: expected a prompt (log: {tmp_path}/out/seed0/grpo/"
                              f"train.log)"), lines
    assert runner.failure_line(tmp_path / "nope.log").startswith("(no log at")
