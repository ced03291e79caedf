"""The scaling report (red_megatron/study/scaling_report.py) on a hand-made study directory: two sizes, the lr grid
partly run, the main cells of a few presets; the numbers it must find are known from how the files were made."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from red_megatron.study import scaling_report as R
from tests.test_chain_study import _fake_files


def _safetensors(d: Path, n: int) -> Path:
    d.mkdir(parents=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [n, 10], "data_offsets": [0, 40 * n]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(40 * n))
    return d


def _lr_cell(out: Path, size: str, mult: str, preset: str, acc: float, trunc: float) -> None:
    d = out / size / "lr" / mult / "seed0" / preset
    (d / "eval").mkdir(parents=True)
    rows = [{"reward": float(i < acc * 10), "truncated": i < trunc * 10} for i in range(10)]
    (d / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "eval.done.json").write_text("{}")


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "scaling"
    bases = {"s": _safetensors(tmp_path / "bs", 50_000), "m": _safetensors(tmp_path / "bm", 180_000)}
    (tmp_path / "bm" / "gate.json").write_text(json.dumps({"passed": False, "checks": [
        {"name": "k=4 pass@1 (T=1)", "value": 85.8, "rule": "in [30, 85] %", "passed": False}]}))
    (out).mkdir()
    (out / "scaling.json").write_text(json.dumps({"lr_1x": 3e-4, "lr_mults": [0.5, 1.0, 2.0], "lr_seed": 0,
                                                  "sizes": {z: {"base": str(b)} for z, b in bases.items()}}))
    for m, (acc, trunc) in {"x0.5": (0.6, 0.0), "x1": (0.9, 0.1), "x2": (0.9, 0.0)}.items():
        _lr_cell(out, "m", m, "red", acc, trunc)
    _lr_cell(out, "m", "x2", "sft_then_grpo", 0.0, 0.9)  # the collapse signature
    main = out / "m" / "main"
    for s, other in enumerate((0.5, 0.25, 0.5)):
        _fake_files(main / "red", "base", s, 0.25)
        _fake_files(main / "red", "red", s, 0.75)
        _fake_files(main / "sft_then_grpo", "sft_then_grpo", s, other, steps=6)
        _fake_files(main / "red_shift", "red_shift", s, 0.75)
    _fake_files(out / "s" / "main" / "red", "red", 0, 0.5)
    _fake_files(out / "m" / "variant_clean" / "red", "red", 0, 0.5)
    return out, tmp_path


def test_report_numbers_missing_cells_and_figure(study):
    out, tmp = study
    a = R.write(out, tmp / "rep" / "scaling_t.md", presets=["red", "red_shift", "sft_then_grpo", "grpo"],
                seeds=[0, 1, 2], setup="hand-made")
    m, s = a["sizes"]["m"], a["sizes"]["s"]
    assert (m["params"], s["params"]) == (1_800_000, 500_000)
    # the lr curve: 2× ties 1× within a point and the tie goes to 1×; sft_then_grpo's 2× collapsed
    assert m["lr_curve"]["red"]["x1"] == {"acc": 90.0, "trunc": 10.0, "samples": 10}
    assert m["lr_choice"]["red"] == 1.0 and m["lr_choice"]["sft_then_grpo"] is None
    assert m["lr_curve"]["sft_then_grpo"]["x2"]["trunc"] == 90.0
    # red − sft_then_grpo: 25, 50, 25 points in the three seeds; red − red_shift: 0
    e = m["edges"]["sft_then_grpo"]["overall"]
    assert e["deltas"] == pytest.approx([25.0, 50.0, 25.0]) and e["se"] == pytest.approx(25 / 3)
    assert m["edges"]["sft_then_grpo"]["verdict"] == "supported"
    assert m["edges"]["red_shift"]["overall"]["mean"] == 0.0 and m["edges"]["red_shift"]["verdict"] == "inconclusive"
    assert m["edges"]["phi4_recipe"]["overall"]["n"] == 0 and m["edges"]["phi4_recipe"]["verdict"] == "inconclusive"
    # tokens: 12 steps × 3 × 8 × 10 for red; sft_then_grpo ran 6 steps, so it used half and is behind on both counts
    et = m["equal_tokens"]
    assert et["budget"] == 6 * 240 and et["rows"]["red"]["rollout_tok"] == 12 * 240
    assert et["rows"]["sft_then_grpo"]["vs_red_tokens"] == 0.5
    assert et["rows"]["sft_then_grpo"]["verdict"] == "undecided (the one ahead used more tokens)"
    assert et["rows"]["red_shift"]["verdict"] == "red ahead with no more tokens"  # equal accuracy, equal tokens
    assert et["rows"]["red"]["online_acc_at_budget"][0] == 50.0
    assert m["w"]["red_w"][0] == 1.5 and "distance" not in m["w"]  # frozen_w not run
    assert "lr grpo x1" in m["missing"] and "main grpo seed 2" in m["missing"]
    assert "main red seed 0" not in m["missing"] and "main base seed 0" not in m["missing"]
    assert "main base seed 0" in s["missing"] and "main red seed 1" in s["missing"]
    text = (tmp / "rep" / "scaling_t.md").read_text()
    m_text = text[text.index("## Size `m`"):]
    assert "**Missing cells** (not run yet): lr red_shift x0.5," in m_text  # red's grid is complete at m
    assert "| red | 60.0 (0.0) | 90.0 (10.0) ◀ | 90.0 (0.0) | 1× |" in m_text
    assert "| sft_then_grpo | – | – | 0.0 (90.0) | – |" in m_text
    assert "| sft_then_grpo | +33.3 ± 8.3 (n=3, 3↑/0↓) |" in m_text
    assert m["variants"] == {"clean": {"red": {"acc": 50.0, "hard": 50.0, "main_acc": 75.0}}} and not s["variants"]
    assert "| clean | 50.0 [75.0] / 50.0 | – | – | – |" in m_text and "--sizes s --phase variants" in text
    assert "not run at this size" in text and "hand-made" in text
    assert "Base: **gate FAILED, taken with --allow-failed-gate**: k=4 pass@1 (T=1) 85.8 % (in [30, 85] %: FAILED)." \
        in m_text and "Base: no gate report beside the base." in text
    across = text[text.index("## Across sizes"):text.index("## Size `s`")]  # smallest size first
    assert "| | `s` (0.50M) | `m` (1.80M) |" in across
    assert "| red | 50.0 (50.0) (n=1) | 75.0 ± 0.0 (75.0) (n=3) |" in across
    assert "| red − sft_then_grpo | – | +33.3 ± 8.3 (n=3, 3↑/0↓) **supported** |" in across
    assert "| C7 " in across and str(tmp) not in text  # bases by name, not by this machine's path
    assert json.loads((tmp / "rep" / "scaling_t.json").read_text())["sizes"]["m"]["edges"]
    pytest.importorskip("matplotlib")
    assert (tmp / "rep" / "scaling_t.png").stat().st_size > 1000 and "scaling_t.png" in text


def test_cli_refuses_a_directory_without_scaling_json(tmp_path, capsys):
    assert R.main(["--out", str(tmp_path)]) == 2
    assert "no scaling.json" in capsys.readouterr().err
