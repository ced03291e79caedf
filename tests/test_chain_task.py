"""The countdown chain task (red_megatron/study/tasks/chain.py, STUDY_DESIGN §6.1-6.3): the rule, the formats,
the splits' disjointness and determinism, the golds, the token limit and the teacher's boxed answer."""
from __future__ import annotations

import random
import re

import pytest

from red_megatron.study.tasks import chain
from red_megatron.study.tasks.chain import ChainTaskConfig

BOX = re.compile(r"\\boxed\{([^}]*)\}")
NOISY = dict(p_check=0.5, p_replay=0.5, p_detour=0.2, p_preamble=0.5, p_wrong=0.2)


@pytest.fixture(scope="module")
def cpu():
    cfg = ChainTaskConfig()
    return cfg, chain.split_problems(cfg)


@pytest.fixture(scope="module")
def noisy():
    cfg = ChainTaskConfig(**NOISY)
    problems = chain.split_problems(cfg)
    return cfg, {s: chain.make_rows(cfg, s, problems) for s in chain.SPLITS}


def test_rule_a_plus_c_and_its_example():
    assert chain.step((3, 7, 2)) == (7, 2, 5)  # (a, b, c) -> (b, c, a + c mod 10)
    assert chain.step((9, 0, 8)) == (0, 8, 7)  # 9 + 8 = 17 ends in 7
    assert chain.step((3, 7, 2), "a*c+b") == (7, 2, 3)  # 3 * 2 + 7 = 13
    assert chain.step((1, 2, 3, 4)) == (2, 3, 4, 4)  # width 4: the rule reads the first three digits
    assert chain.native_response((3, 7, 2), 3) == "3|372 2|725 1|252 0|524 So the answer is 524. \\boxed{524}"
    # a bijection on Z_10^3: 1000 distinct images, so there is no short-cycle shortcut in a few steps
    images = {chain.step(chain.to_state(n, 3)) for n in range(1000)}
    assert len(images) == 1000
    s = chain.to_state(372, 3)
    period = next(p for p in range(1, 2000) if chain.chain_states(s, p)[-1] == s)
    assert period > 50


def test_prompt_is_fixed_length_and_states_the_start_and_steps():
    assert chain.prompt_text((0, 7, 2), 7) == "Start 072. Steps 7."
    lengths = {len(chain.prompt_text(chain.to_state(n, 3), k)) for n in (0, 5, 999) for k in range(1, 10)}
    assert lengths == {len("Start 372. Steps 7.")}


def test_every_line_of_every_trace_follows_the_rule(noisy):
    cfg, rows = noisy
    line = re.compile(r"(\d+)\|(\d{3})")
    for r in rows["train"][:400]:
        info, text = r["extra_info"], r["target"][0]["content"]
        k, s0 = info["k"], chain.to_state(info["s0"], 3)
        truth = chain.chain_states(s0, k)
        lines = [(int(j), chain.to_state(d, 3)) for j, d in line.findall(text)]
        assert lines[0] == (k, s0)
        # a check restates its line; a detour's wrong line is followed by "that is wrong"; the rest is the chain
        clean = re.sub(r"\d+\|\d{3} Wait, that is wrong: [^.]*\.", "", text)
        clean = re.sub(r"Wait, let me check: [^.]*\. Yes, \d+\|\d{3}", "", clean)
        first_pass = [(int(j), chain.to_state(d, 3)) for j, d in line.findall(clean)][:k + 1]
        assert [j for j, _ in first_pass] == list(range(k, -1, -1))
        if not info["wrong"]:
            assert [s for _, s in first_pass] == truth
        for m in re.finditer(r"check: (\d) \+ (\d) ends in (\d)\.", text):
            assert (int(m.group(1)) + int(m.group(2))) % 10 == int(m.group(3))
        assert text.count("Wait, let me check") == info["checks"]
        assert text.count("Wait, let me verify the whole chain again.") == info["replay"]
        assert text.count("Wait, that is wrong") == info["detours"]
        assert text.count(chain.PREAMBLE) == info["preamble"]


def test_last_box_is_the_gold_unless_the_wrong_teacher_fired(noisy):
    _, rows = noisy
    wrong = 0
    for split in ("train", "val", "test"):
        for r in rows[split]:
            boxed = BOX.findall(r["target"][0]["content"])[-1]
            gold = r["reward_model"]["ground_truth"]
            if r["extra_info"]["wrong"]:
                wrong += 1
                assert boxed != gold and boxed[0] != "0"
            else:
                assert boxed == gold
    assert 0.1 < wrong / sum(len(rows[s]) for s in ("train", "val", "test")) < 0.3  # p_wrong = 0.2
    for r in rows["pretrain"][:2000]:  # native rows: always right
        assert BOX.findall(r["target"][0]["content"])[-1] == r["reward_model"]["ground_truth"]


def test_golds_are_right_and_have_no_leading_zero(noisy):
    _, rows = noisy
    for split, rs in rows.items():
        for r in rs:
            info, gold = r["extra_info"], r["reward_model"]["ground_truth"]
            assert len(gold) == 3 and gold[0] != "0", (split, r)
            assert gold == chain.digits(chain.chain_states(chain.to_state(info["s0"], 3), info["k"])[-1])


def test_splits_are_disjoint_and_sized(cpu):
    cfg, p = cpu
    pairs = {s: {(s0, k) for s0, k, _ in p[s]} for s in chain.SPLITS}
    for i, a in enumerate(chain.SPLITS):
        for b in chain.SPLITS[i + 1:]:
            assert not pairs[a] & pairs[b], (a, b)
    for s in ("test", "val", "train"):  # no repeats within the evaluated and teacher splits
        assert len(pairs[s]) == len(p[s])
    assert (len(p["test"]), len(p["val"]), len(p["train"]), len(p["pretrain"])) == (192, 288, 2048, 24000)
    bands = {}
    for _, k, src in p["test"]:
        bands.setdefault(src, set()).add(k)
    assert bands == {"chain_easy": {1, 2, 3}, "chain_medium": {4, 5}, "chain_hard": {6, 7, 8, 9}}
    assert all(sum(1 for _, _, s in p["test"] if s == b) == 64 for b in bands)
    assert all(sum(1 for _, kk, _ in p["val"] if kk == k) == 32 for k in range(1, 10))
    assert {k for _, k, _ in p["pretrain"]} <= {1, 2, 3, 4, 5}
    frac4 = sum(1 for _, k, _ in p["pretrain"] if k == 4) / 24000
    assert abs(frac4 - 0.12) < 0.01
    train_hard = sum(1 for _, k, _ in p["train"] if k >= 6) / 2048
    assert abs(train_hard - 4 / 9) < 0.01


def test_test_split_is_made_first_and_does_not_move_when_other_splits_change():
    a = chain.split_problems(ChainTaskConfig())
    b = chain.split_problems(ChainTaskConfig(train_rows=500, val_per_k=8, pretrain_rows=300, pretrain_seed=3))
    assert a["test"] == b["test"]
    c = chain.split_problems(ChainTaskConfig(ood=True))
    assert c["test"][:192] == a["test"] and {k for _, k, s in c["test"][192:]} == {10, 11, 12}


def test_determinism_and_trace_knobs_keep_the_problems():
    cfg = ChainTaskConfig(**NOISY, pretrain_rows=500)
    assert chain.make_rows(cfg, "train") == chain.make_rows(ChainTaskConfig(**NOISY, pretrain_rows=500), "train")
    clean = ChainTaskConfig(p_check=0, p_replay=0, pretrain_rows=500)
    assert chain.split_problems(clean) == chain.split_problems(cfg)  # a premise-off variant: same problems
    rows = chain.make_rows(clean, "train")
    assert all("Wait" not in r["target"][0]["content"] for r in rows)
    assert chain.make_rows(ChainTaskConfig(test_seed=5), "test") != chain.make_rows(ChainTaskConfig(), "test")


def test_traces_fit_the_token_limit_with_the_real_tokenizer(noisy):
    from red_megatron.study.tiny_checkpoint import train_tokenizer

    cfg, rows = noisy
    tok = train_tokenizer(512, "chain")
    resampled = 0
    for split in ("train", "val", "test", "pretrain"):
        for r in rows[split][:600]:
            ids = tok.encode(r["target"][0]["content"]).ids
            assert len(ids) == r["extra_info"]["trace_tokens"]  # the generator's count is the tokenizer's
            assert len(ids) + 1 <= cfg.max_trace_tokens  # + EOS within the response limit
            resampled += r["extra_info"]["resamples"] > 0
    assert resampled > 0  # the noisy knobs do push some traces over the limit, and they were redrawn
    short = ChainTaskConfig(max_trace_tokens=120, p_replay=1.0)
    text, info = chain.teacher_trace((3, 7, 2), 9, short, random.Random(0))
    assert info["trace_tokens"] + 1 <= 120 and info["replay"] == 0 and info["resamples"] > 0
    with pytest.raises(ValueError, match="max_trace_tokens"):
        chain.teacher_trace((3, 7, 2), 9, ChainTaskConfig(max_trace_tokens=40), random.Random(0))


def test_the_cpu_teacher_is_redundant_as_specified(cpu):
    cfg, p = cpu
    rows = chain.make_rows(cfg, "train", p)
    checks = sum(r["extra_info"]["checks"] for r in rows) / sum(r["extra_info"]["k"] for r in rows)
    replay = sum(r["extra_info"]["replay"] for r in rows) / len(rows)
    assert abs(checks - 0.3) < 0.03 and abs(replay - 0.15) < 0.03
    assert sum(r["extra_info"]["resamples"] > 0 for r in rows) / len(rows) < 0.05  # "a few % of traces"
    assert all(r["extra_info"]["wrong"] == 0 and r["extra_info"]["detours"] == 0 for r in rows)


def test_parquet_round_trip_through_the_project_loader(tmp_path):
    from red_megatron.data.records import iter_rows

    cfg = ChainTaskConfig(pretrain_rows=64, train_rows=32, val_per_k=2, test_per_band=4)
    paths = chain.write_splits(cfg, tmp_path)
    assert sorted(p.name for p in paths.values()) == sorted(f"chain_{s}.parquet" for s in chain.SPLITS)
    recs = [rec for _, _, rec in iter_rows(paths["test"])]
    assert recs == chain.make_rows(cfg, "test")
    assert {r["data_source"] for r in recs} == {"chain_easy", "chain_medium", "chain_hard"}


def test_gpu_flag_set():
    g = chain.gpu_config()
    assert (g.width, g.rule, g.k_max, g.max_trace_tokens, g.p_wrong) == (4, "a*c+b", 24, 1024, 0.1)
    p = chain.split_problems(dataclass_small(g))
    rows = chain.make_rows(dataclass_small(g), "train", p)
    assert any(r["extra_info"]["k"] >= 10 for r in rows)
    for r in rows:
        gold = r["reward_model"]["ground_truth"]
        assert len(gold) == 4 and gold[0] != "0"
        text = r["target"][0]["content"]
        assert text.startswith(chain.PREAMBLE) == bool(r["extra_info"]["preamble"])
        if not r["extra_info"]["wrong"]:
            assert BOX.findall(text)[-1] == gold


def dataclass_small(cfg):
    import dataclasses

    return dataclasses.replace(cfg, pretrain_rows=100, train_rows=200, val_per_k=2, test_per_band=8)


@pytest.mark.parametrize("bad", [dict(width=2), dict(rule="a-b"), dict(p_check=1.5), dict(preamble_at="middle"),
                                 dict(pretrain_k_probs={1: 0.5}), dict(train_rows=0), dict(bands=(("x", 3, 1),))])
def test_bad_knobs_are_one_clear_value_error(bad):
    with pytest.raises(ValueError, match="ChainTaskConfig." + next(iter(bad)).split("_")[0]):
        ChainTaskConfig(**bad)


def test_a_split_too_large_for_the_state_space_is_refused():
    with pytest.raises(ValueError, match="split 'val' needs"):
        chain.split_problems(ChainTaskConfig(val_per_k=950))


def test_script_writes_the_splits_with_knob_overrides(tmp_path):
    from scripts.make_chain_task import main

    paths = main(["--out", str(tmp_path), "--p-replay", "0", "--p-check", "0", "--train-rows", "40",
                  "--pretrain-rows", "50", "--splits", "train", "test"])
    from red_megatron.data.records import iter_rows

    rows = [rec for _, _, rec in iter_rows(paths["train"])]
    assert len(rows) == 40 and all("Wait" not in r["target"][0]["content"] for r in rows)
    assert sorted(paths) == ["test", "train"] and (tmp_path / "chain_config.json").exists()
