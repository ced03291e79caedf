"""The entry points: every console script answers --help (as a module and as the installed script), and
`red-train --check` validates the README's "Real runs" lines against checkpoints shaped like the named
models (config.json with the real head/layer/vocab numbers + a tokenizer; no weights)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hf_shapes import SHAPES, qwen25_config

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
COMMANDS = ("train", "eval", "launch", "study", "export")


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "RED_DEBUG": ""}


def _run_all(cmds: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Start every command at once (each spends ~1 s importing), then collect."""
    procs = [subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    out = []
    for c, p in zip(cmds, procs):
        so, se = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(c, p.returncode, so, se))
    return out


def test_every_entry_point_module_answers_help():
    results = _run_all([[sys.executable, "-m", f"red_megatron.cli.{c}", "--help"] for c in COMMANDS])
    for c, r in zip(COMMANDS, results):
        assert r.returncode == 0, (c, r.stderr[-2000:])
        assert r.stdout.startswith(f"usage: red-{c}"), (c, r.stdout[:200])
        assert "--debug" in r.stdout and "section." in r.stdout, c  # the shared flags and override syntax


def test_installed_console_scripts_answer_help():
    missing = [c for c in COMMANDS if not (VENV_BIN / f"red-{c}").exists()]
    if missing:
        pytest.skip(f"console scripts {missing} are not installed in {VENV_BIN}; run "
                    f"`{sys.executable} -m pip install --no-deps -e .`")
    results = _run_all([[str(VENV_BIN / f"red-{c}"), "--help"] for c in COMMANDS])
    for c, r in zip(COMMANDS, results):
        assert r.returncode == 0, (c, r.stderr[-2000:])  # no ModuleNotFoundError: 'scripts'
        assert r.stdout.startswith(f"usage: red-{c}"), (c, r.stdout[:200])


def test_scripts_are_thin_wrappers_of_the_cli():
    results = _run_all([[sys.executable, str(REPO / "scripts" / f"{s}.py"), "--help"]
                        for s in ("train", "eval", "launch", "preset_study")])
    for s, r in zip(("train", "eval", "launch", "study"), results):
        assert r.returncode == 0 and r.stdout.startswith(f"usage: red-{s}"), (s, r.stderr[-1000:])


# --- red-train --check against the README's real runs ------------------------------------------------
def write_shaped_model(out: Path, tokenizer_dir: Path, name: str) -> Path:
    """config.json with ``name``'s numbers + the tiny checkpoint's tokenizer files: all --check reads."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(qwen25_config(name), indent=1))
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "vocab.json", "merges.txt"):
            shutil.copy2(f, out / f.name)
    return out


def run_train(argv: list[str]) -> tuple[int, str, str]:
    """red-train in-process through its main(argv): (exit code, stdout, stderr)."""
    from red_megatron.cli.train import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# (README line, model, world size): one 8-GPU node for 1.5B, 2 nodes for 7B (the launch line) and 32B
README_RUNS = [
    ("--recipe qwen25_math_1p5b model_dir={m} data.path=/data/openr1_math_46k_8192.parquet", "Qwen2.5-Math-1.5B", 1),
    ("--recipe qwen25_math_1p5b model_dir={m} data.path=/data/openr1_math_46k_8192.parquet", "Qwen2.5-Math-1.5B", 8),
    ("--recipe qwen25_7b model_dir={m}", "Qwen2.5-7B", 16),
    ("--recipe qwen25_32b model_dir={m}", "Qwen2.5-32B", 16),
]


@pytest.mark.parametrize("line,model,world", README_RUNS, ids=[f"{m}-w{w}" for _, m, w in README_RUNS])
def test_check_mode_validates_the_readme_real_runs(tmp_path, tiny_ckpt_dir, line, model, world, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    m = write_shaped_model(tmp_path / model, tiny_ckpt_dir, model)
    rc, out, err = run_train(line.format(m=m).split() + ["--check", "--world-size", str(world)])
    assert rc == 0, err
    hf = SHAPES[model]
    assert out.startswith("check OK:") and out.count("\n") == 1, out  # one paragraph
    assert f"{hf['num_hidden_layers']} layers, {hf['num_attention_heads']} heads / {hf['num_key_value_heads']} KV" in out
    assert f"vocab {hf['vocab_size']}" in out and f"world {world} = TP" in out
    assert "not on this machine" in out  # the recipe's data paths are not here; --check says so, no failure


def test_check_mode_reads_world_size_from_the_environment(tmp_path, tiny_ckpt_dir, monkeypatch):
    m = write_shaped_model(tmp_path / "m", tiny_ckpt_dir, "Qwen2.5-7B")
    monkeypatch.setenv("WORLD_SIZE", "6")  # TP 2: DP 3 does not divide 64 prompts
    rc, _, err = run_train(["--recipe", "qwen25_7b", f"model_dir={m}", "--check"])
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "global_batch_size=64" in err and "data-parallel size 3" in err
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert run_train(["--recipe", "qwen25_7b", f"model_dir={m}", "--check"])[0] == 0


def test_check_mode_refuses_a_layout_the_heads_do_not_allow(tmp_path, tiny_ckpt_dir, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    m = write_shaped_model(tmp_path / "m", tiny_ckpt_dir, "Qwen2.5-7B")  # 28 heads, 4 KV heads
    rc, out, err = run_train(["--recipe", "qwen25_7b", f"model_dir={m}", "policy.tp=8", "--world-size", "16",
                              "--check"])
    assert rc == 2 and out == "" and "policy.tp=8" in err and "heads" in err and err.count("\n") == 1, err


def test_check_mode_takes_overrides_in_any_order(tmp_path, tiny_ckpt_dir, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    m = write_shaped_model(tmp_path / "m", tiny_ckpt_dir, "Qwen2.5-Math-1.5B")
    a = ["rollout.tp_infer=2", "rollout.executor=external_launcher"]
    for order in (a, a[::-1]):
        rc, out, err = run_train(["--recipe", "qwen25_math_1p5b", f"model_dir={m}", *order, "--world-size", "8",
                                  "--check"])
        assert rc == 0, err
        assert "vLLM tp_infer=2 (external_launcher executor" in out


def test_check_mode_splits_the_world_with_the_run_validator(tmp_path, tiny_ckpt_dir, monkeypatch):
    """--check prints the data-parallel size the run uses (config.check_layout's), context parallelism
    included: it used to print world / (tp x pp), DP 8 for a run that trains at DP 4."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    m = write_shaped_model(tmp_path / "m", tiny_ckpt_dir, "Qwen2.5-Math-1.5B")
    rc, out, err = run_train(["--recipe", "qwen25_math_1p5b", f"model_dir={m}", "policy.cp=2", "--world-size", "8",
                              "--check"])
    from red_megatron.cli.train import parse_config
    from red_megatron.config import check_layout

    cfg = parse_config(["--recipe", "qwen25_math_1p5b", f"model_dir={m}", "policy.cp=2"])
    assert rc == 0 and check_layout(cfg, 8) == 4, err
    assert "world 8 = TP 1 x PP 1 x CP 2 x DP 4 " in out, out
    assert f"{cfg.data.global_batch_size} prompts a step ({cfg.data.global_batch_size // 4} a DP rank)" in out, out


def test_demo_names_the_rows_of_the_runs_own_evaluation_table():
    sys.path.insert(0, str(REPO / "scripts"))
    from demo import demo_table

    run_table = ("| Model | synthetic_copy | Avg. | LEN |\n|---|---:|---:|---:|\n| step 0 | 6.18 | 6.18 | 12 |\n"
                 "| step 40 | 83.38 | 83.38 | 12 |\n\n- step 0: synthetic_copy: avg@2-10 (paper: -) over 10 problems\n"
                 "- step 40: synthetic_copy: avg@2-10 (paper: -) over 10 problems\n")
    got = demo_table(run_table, {"step 0": "base", "step 40": "after 40 steps of red from it"}).splitlines()
    assert got[2:5] == ["| base | 6.18 | 6.18 | 12 |", "| after 40 steps of red from it | 83.38 | 83.38 | 12 |",
                        "| chance (a random digit: the gold is one of 10) | 10.00 | 10.00 | – |"]
    assert got[6] == "- base: synthetic_copy: avg@2-10 (paper: -) over 10 problems"


def test_every_entry_point_answers_version(capsys):
    import importlib

    from red_megatron import __version__

    for c in COMMANDS:
        with pytest.raises(SystemExit) as e:
            importlib.import_module(f"red_megatron.cli.{c}").main(["--version"])
        assert e.value.code == 0, c
        assert capsys.readouterr().out == f"red-{c} (red-megatron) {__version__}\n", c


def test_demo_refuses_a_run_of_no_steps(capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    from demo import main as demo_main

    for argv, msg in ((["--steps", "0"], "bad --steps=0 in demo.py: expected an int >= 1"),
                      (["--base-steps", "-1"], "bad --base-steps=-1 in demo.py: expected an int >= 0")):
        assert demo_main(argv) == 2  # before any asset, model or engine is made
        assert capsys.readouterr().err == f"error: {msg}\n"
