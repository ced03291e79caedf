"""The Table-1 probes (red_megatron.study.probe) and claim C10: the entropy math against a float64 computation on
a tiny model, the tokens against the training dataset, pure and deterministic T=1 sampling, the probe.json cache,
which checkpoints of a study are probed, and C10's verdicts on hand-made studies."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from red_megatron.study import claims as cl
from red_megatron.study import probe as pr
from red_megatron.study import runner

# the probes' short response limits cut the tiny traces before their answer; RedDataset says so, rightly
pytestmark = pytest.mark.filterwarnings("ignore:.*cut before their")


@pytest.fixture(scope="module")
def val_path(tmp_path_factory):
    """A chain-val-shaped parquet (OpenR1 schema, teacher traces), ordered by k like the real split."""
    from red_megatron.study.tasks.chain import ChainTaskConfig, digits, prompt_text, teacher_trace, to_state, write_rows

    task, rows = ChainTaskConfig(), []
    for i, (s0, k) in enumerate([(423, 1), (518, 1), (907, 2), (311, 2), (642, 3), (275, 3)]):
        st = to_state(s0, 3)
        text, info = teacher_trace(st, k, task, random.Random(i))
        rows.append({"data_source": "chain_easy", "prompt": [{"role": "user", "content": prompt_text(st, k)}],
                     "target": [{"role": "assistant", "content": text}],
                     "reward_model": {"ground_truth": "123", "style": "rule"}, "ability": "math",
                     "extra_info": {"index": i, "split": "val", "k": k, "s0": digits(st), **info}})
    return write_rows(rows, tmp_path_factory.mktemp("val") / "chain_val.parquet")


@pytest.fixture(scope="module")
def peaky_ckpt(tiny_ckpt_dir, tmp_path_factory):
    """The tiny checkpoint with its output layer scaled up: a random init is near-uniform at every position (an
    off-by-one in the logits would hide inside any tolerance); this one's entropy varies from token to token."""
    out = tmp_path_factory.mktemp("peaky") / "hf"
    shutil.copytree(tiny_ckpt_dir, out)
    m = _model(out, torch.float32)
    with torch.no_grad():
        m.lm_head.weight.mul_(60.0)
    m.save_pretrained(out)
    return out


def _cfg(val, **kw):
    return pr.ProbeConfig(val_path=str(val), **{"n_rows": 3, "max_response_tokens": 12, "seed": 3, **kw})


def _model(d, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype).eval()


def _f64_mean_entropy(model64, prompts, responses) -> list[float]:
    out = []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            logits = model64(input_ids=torch.tensor([p + r])).logits[0].double()
            probs = torch.softmax(logits, dim=-1)
            h = -(probs * torch.log(probs)).sum(-1)  # h[t]: the entropy of the distribution of token t + 1
            out.append(float(h[len(p) - 1:len(p) + len(r) - 1].mean()))
    return out


def test_probe_entropies_match_float64_on_the_training_tokens(peaky_ckpt, val_path):
    from red_megatron.data.chat import load_tokenizer
    from red_megatron.data.dataset import DataConfig, RedDataset

    cfg = _cfg(val_path, max_response_tokens=72)
    res = pr.probe_checkpoint(peaky_ckpt, cfg)
    tok = load_tokenizer(peaky_ckpt)
    # the tokens training sees: RedDataset of the same file and limits (trace cut to 72 with EOS last)
    ds = RedDataset.load(DataConfig(path=str(val_path), max_prompt_tokens=32, max_response_tokens=72,
                                    answer_check="off"), tok)
    idx = pr.probe_rows(len(ds), 3, "spread")
    assert idx == [0, 2, 4] and res["rows"] == [0, 2, 4]  # spread over k 1, 2, 3; "first" would be k 1, 1, 2
    prompts, traces = [ds[i].prompt_ids for i in idx], [ds[i].trace_ids for i in idx]
    lens = [len(t) for t in traces]
    assert all(t[-1] == ds.eos_id for t in traces) and min(lens) < 72 == max(lens)  # whole and cut traces
    assert res["sft_len"] == pytest.approx(sum(lens) / 3)
    m32, m64 = _model(peaky_ckpt, torch.float32), _model(peaky_ckpt, torch.float64)
    ref_sft = _f64_mean_entropy(m64, prompts, traces)
    assert res["h_sft_per_sample"] == pytest.approx(ref_sft, rel=1e-5)
    assert res["h_sft"] == pytest.approx(sum(ref_sft) / 3, rel=1e-5)
    # H^rl: the probe's own samples, drawn again with the same seed, scored in float64
    stops = pr.stop_token_ids(m32, tok)
    assert stops == sorted({tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")})
    samples = pr.sample_responses(m32, prompts, stops, tok.pad_token_id, cfg)
    assert [len(s) for s in samples] == res["rl_lengths"]
    assert all(len(s) <= 72 and all(t not in stops for t in s[:-1]) for s in samples)
    ref_rl = _f64_mean_entropy(m64, prompts, samples)
    assert res["h_rl_per_sample"] == pytest.approx(ref_rl, rel=1e-5)
    assert res["h_rl"] == pytest.approx(sum(ref_rl) / 3, rel=1e-5)
    # entropies that differ from token to token, so a shifted position could not pass the comparison
    assert max(ref_sft) - min(ref_sft) > 0.1 * max(ref_sft) and 0 < res["h_rl"] < float(torch.log(torch.tensor(1024.)))


def test_sampling_is_full_softmax_seeded_and_leaves_the_global_rng_alone(tiny_ckpt_dir, val_path):
    from red_megatron.data.chat import load_tokenizer

    tok = load_tokenizer(tiny_ckpt_dir)
    m = _model(tiny_ckpt_dir, torch.float32)
    ids = torch.tensor([tok("<|im_start|>user\nStart 423. Steps 1.<|im_end|>\n")["input_ids"]] * 2)
    gen = pr.generation_config(6, [0], 0, output_scores=True, output_logits=True, return_dict_in_generate=True)
    out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
    # no warper touched the logits (transformers' default top_k=50 would set most of them to -inf)
    assert all(torch.equal(s, lg) for s, lg in zip(out.scores, out.logits)) and len(out.scores) >= 1
    state = torch.random.get_rng_state()
    a = pr.probe_checkpoint(tiny_ckpt_dir, _cfg(val_path))
    b = pr.probe_checkpoint(tiny_ckpt_dir, _cfg(val_path))
    c = pr.probe_checkpoint(tiny_ckpt_dir, _cfg(val_path, seed=4))
    assert torch.equal(state, torch.random.get_rng_state())
    assert a["rl_samples_sha256"] == b["rl_samples_sha256"] and a["h_rl"] == b["h_rl"]
    assert c["rl_samples_sha256"] != a["rl_samples_sha256"] and c["h_sft"] == a["h_sft"]  # teacher-forced: no seed


def _fake_ckpt(d: Path, payload: bytes = b"w") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(payload)
    return d


def _fake_compute(calls):
    def compute(model_dir, cfg):
        calls.append((str(model_dir), cfg.seed))
        return {"h_sft": 0.5 + cfg.seed, "h_rl": 0.25, "n": cfg.n_rows, "sft_len": 9.0, "rl_len": 7.0,
                "rl_truncated": 0, "seconds": 0.1, "rows": []}
    return compute


def test_probe_json_is_reused_only_for_the_same_checkpoint_and_settings(tmp_path, monkeypatch, val_path):
    calls = []
    monkeypatch.setattr(pr, "probe_checkpoint", _fake_compute(calls))
    a = _fake_ckpt(tmp_path / "a" / "hf")
    cache = a.parent / "probe.json"
    cfg = _cfg(val_path)
    first = pr.cached_probe(a, cache, cfg)
    assert first["cached"] is False and len(calls) == 1 and cache.exists()
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically
    again = pr.cached_probe(a, cache, cfg)
    assert again["cached"] is True and again["h_sft"] == first["h_sft"] and len(calls) == 1
    # a copied study: the same files under another checkpoint path are probed again
    shutil.copytree(a.parent, tmp_path / "b")
    assert pr.cached_probe(tmp_path / "b" / "hf", tmp_path / "b" / "probe.json", cfg)["cached"] is False
    assert calls[-1][0] == str(tmp_path / "b" / "hf")
    n = len(calls)
    _fake_ckpt(a, b"retrained")  # same path, other weights
    assert pr.cached_probe(a, cache, cfg)["cached"] is False and len(calls) == n + 1
    assert pr.cached_probe(a, cache, _cfg(val_path, n_rows=2))["cached"] is False  # other settings
    cache.write_text('{"key": ')  # a damaged file is computed again, not an error
    assert pr.cached_probe(a, cache, cfg)["cached"] is False and len(calls) == n + 3
    assert json.loads(cache.read_text())["key"]["checkpoint"] == str(a.resolve())
    with pytest.raises(ValueError, match="selection"):
        pr.ProbeConfig(val_path="x", selection="random")
    with pytest.raises(ValueError, match="n_rows"):
        pr.ProbeConfig(val_path="x", n_rows=0)


def _study_dirs(out: Path, base: Path, seed: int = 0):
    """Finished cells as the runner leaves them: base (checkpoint outside the study), grpo, sft_then_grpo's two
    stages, frozen_w (never probed), and sft whose checkpoint is broken."""
    d = runner.cell_dir(out, "base", seed)
    d.mkdir(parents=True)
    (d / "train.done.json").write_text(json.dumps({"rc": 0, "hf": str(base)}))
    for c in ("grpo", "sft_then_grpo", "frozen_w", "sft"):
        cd = runner.cell_dir(out, c, seed)
        for st in runner.stage_dirs(cd / "run", runner.preset_of(c)):
            _fake_ckpt(st / "hf", c.encode())
        (cd / "train.done.json").write_text(json.dumps({"rc": 0}))


def test_ensure_probes_covers_base_finals_and_the_sft_stage_and_survives_a_bad_checkpoint(tmp_path, monkeypatch,
                                                                                           val_path):
    calls = []
    compute = _fake_compute(calls)

    def maybe_fail(model_dir, cfg):
        if "/sft/" in str(model_dir):
            raise RuntimeError("broken weights")
        return compute(model_dir, cfg)

    monkeypatch.setattr(pr, "probe_checkpoint", maybe_fail)
    base = _fake_ckpt(tmp_path / "assets" / "hf")
    out = tmp_path / "study"
    for s in (0, 1):
        _study_dirs(out, base, s)
    failed = pr.ensure_probes(out, ["base", "grpo", "sft_then_grpo", "frozen_w", "sft", "luffy"], [0, 1],
                              _cfg(val_path), log=lambda *_: None)
    assert len(failed) == 2 and all("sft/seed" in f and "broken weights" in f for f in failed)
    probed = {(Path(m).relative_to(tmp_path).as_posix(), s) for m, s in calls}
    want = {"assets/hf", "study/seed{s}/grpo/run/hf", "study/seed{s}/sft_then_grpo/run/stage0_sft/hf",
            "study/seed{s}/sft_then_grpo/run/stage1_grpo/hf"}
    assert probed == {(w.format(s=s), s) for w in want for s in (0, 1)}  # the base once per seed, with that seed
    assert (out / "seed1" / "base" / "probe.json").exists() and not (base.parent / "probe.json").exists()
    assert (out / "seed0" / "sft_then_grpo" / "run" / "stage0_sft" / "probe.json").exists()
    got = pr.read_probes(out, "sft_then_grpo", 1)
    assert set(got) == {"final", "stage0_sft"} and got["final"]["h_sft"] == 1.5
    assert got["final"]["settings"]["seed"] == 1 and pr.read_probes(out, "frozen_w", 0) == {}
    n = len(calls)
    pr.ensure_probes(out, ["base", "grpo", "sft_then_grpo"], [0, 1], _cfg(val_path), log=lambda *_: None)
    assert len(calls) == n  # everything cached: a rerun of the analysis computes nothing


def _probe_study(values: dict[str, list[tuple[float, float]]]) -> dict:
    """{config: [(h_sft, h_rl) per seed]} -> a loaded-study dict with only probes."""
    cells = {c: {s: {"probes": {"final": {"h_sft": hs, "h_rl": hr}}} for s, (hs, hr) in enumerate(v)}
             for c, v in values.items()}
    seeds = sorted({s for d in cells.values() for s in d})
    return {"cells": cells, "configs": list(values), "seeds": seeds}


BASE3 = [(1.0, 2.0)] * 3


def test_c10_supported_refuted_inconclusive():
    # grpo: H^rl −50 %, H^sft +5 %; sft: both fall -> supported in every seed and on the means
    good = {"base": BASE3, "grpo": [(1.05, 1.0), (0.97, 1.1), (1.0, 0.9)], "sft": [(0.8, 1.5)] * 3}
    c = cl.c10(_probe_study(good))
    assert c["verdict"] == cl.SUPPORTED and "grpo H^rl -50%" in c["numbers"] and "seed 2: holds" in c["numbers"]
    assert {x["id"]: x for x in cl.scorecard(_probe_study(good))}["C10"]["verdict"] == cl.SUPPORTED
    # grpo's H^rl falls only 20 % in every seed -> refuted
    weak = {**good, "grpo": [(1.0, 1.6)] * 3}
    assert cl.c10(_probe_study(weak))["verdict"] == cl.REFUTED
    # grpo's H^sft moves 12 % (beyond the 10 % band) -> refuted; sft's H^sft rising also refutes
    assert cl.c10(_probe_study({**good, "grpo": [(1.12, 1.0)] * 3}))["verdict"] == cl.REFUTED
    assert cl.c10(_probe_study({**good, "sft": [(1.2, 1.5)] * 3}))["verdict"] == cl.REFUTED
    # the means hold (grpo H^rl −37 %) but seed 2 fails: the seeds disagree -> inconclusive
    split = {**good, "grpo": [(1.0, 1.0), (1.0, 1.0), (1.0, 1.8)]}
    c = cl.c10(_probe_study(split))
    assert c["verdict"] == cl.INCONCLUSIVE and "seed 2: fails" in c["numbers"]
    # paired per seed with the base of that seed: a base probe that differs by seed changes the verdict
    shifted = {**good, "base": [(1.0, 2.0), (1.0, 2.0), (1.0, 1.2)]}  # seed 2: grpo 0.9 vs 1.2 is only −25 %
    assert cl.c10(_probe_study(shifted))["verdict"] == cl.INCONCLUSIVE
    # a missing probe (no sft) or a study without probes -> inconclusive, naming what is missing
    c = cl.c10(_probe_study({"base": BASE3, "grpo": good["grpo"]}))
    assert c["verdict"] == cl.INCONCLUSIVE and "missing probes" in c["numbers"] and "sft (seeds none)" in c["numbers"]
    assert cl.c10({"cells": {}, "configs": [], "seeds": []})["verdict"] == cl.INCONCLUSIVE
    # one seed is enough for a figure-style verdict (as C3-C6), and seeds without all three probes are left out
    one = _probe_study({"base": BASE3[:1], "grpo": [(1.0, 1.0), (1.0, 1.9)], "sft": [(0.8, 1.5)]})
    c = cl.c10(one)
    assert c["verdict"] == cl.SUPPORTED and "seed 1" not in c["numbers"]


def test_report_shows_the_table1_analog(tmp_path, monkeypatch, val_path):
    from red_megatron.study.report import write_report
    from tests.test_chain_study import _fake_files

    calls = []
    compute = _fake_compute(calls)

    def by_config(model_dir, cfg):
        r = compute(model_dir, cfg)
        if "/grpo/" in str(model_dir):
            r["h_rl"] = 0.1  # vs the base's 0.25: −60 %
        return r

    monkeypatch.setattr(pr, "probe_checkpoint", by_config)
    out = tmp_path / "study"
    base = _fake_ckpt(tmp_path / "assets" / "hf")
    for c in ("base", "grpo", "sft_then_grpo"):
        _fake_files(out, c, 0, 0.5)
    (runner.cell_dir(out, "base", 0) / "train.done.json").write_text(json.dumps({"rc": 0, "hf": str(base)}))
    for c in ("grpo", "sft_then_grpo"):
        for st in runner.stage_dirs(runner.cell_dir(out, c, 0) / "run", c):
            _fake_ckpt(st / "hf")
    md = tmp_path / "rep" / "r.md"
    md.parent.mkdir()
    summary = write_report(out, ["base", "grpo", "sft_then_grpo", "sft"], [0], md,
                           {"title": "t", "date": "d", "setup": "s"}, probe=_cfg(val_path, n_rows=64))
    text = md.read_text()
    table = text.split("## Table 1 analog")[1].split("## Claim scorecard")[0]
    assert "| base | final | 1 | 0.500 | 0.250 | – | – |" in table
    assert "| grpo | final | 1 | 0.500 | 0.100 | +0% | -60% |" in table
    assert "| sft_then_grpo | stage0_sft (RL from SFT-N starts here) |" in table
    assert table.index("stage0_sft") < table.index("| sft_then_grpo | final")
    assert "64 evenly spaced `chain_val` rows" in table
    assert len(calls) == 4 and [r["checkpoint"] for r in summary["probes"]].count("final") == 3
    c10 = next(c for c in summary["claims"] if c["id"] == "C10")
    assert c10["verdict"] == cl.INCONCLUSIVE and "sft (seeds none)" in c10["numbers"]  # sft never ran
