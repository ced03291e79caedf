"""red-train --config FILE (YAML/JSON) and --recipe FILE.py: a run described in files (issue 28, item 1).

A config file sets the same dotted fields as the command line, on the recipe and under the command
line's overrides; a run dir's run_config.json replays the run by itself; a recipe may live in any file.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from red_megatron.cli.train import main, parse_config
from red_megatron.config import save_run_config
from tests.test_cli import run_train

OVERRIDES = ["steps=7", "policy.lr=0.0001", "policy.warmup_steps=2", "algo.preset=grpo", "data.require_trace=false",
             "metrics.log_every=3", "rollout.lm_head_fp32=true", "policy.lm_head_fp32=true",
             "eval.protocol.samples_per_row=2"]
YAML = """\
# the same run as OVERRIDES, nested and dotted keys mixed
steps: 7
policy:
  lr: 1e-4            # PyYAML reads this as a string: the command line's parser types it
  warmup_steps: 2
  lm_head_fp32: true
algo.preset: grpo
data: {require_trace: false}
metrics.log_every: 3
rollout.lm_head_fp32: true
eval:
  protocol: {samples_per_row: 2}
"""


def test_yaml_and_json_files_resolve_as_the_overrides(tmp_path):
    want = parse_config(["--recipe", "tiny_cpu", *OVERRIDES])
    (tmp_path / "run.yaml").write_text(YAML)
    got = parse_config(["--recipe", "tiny_cpu", "--config", str(tmp_path / "run.yaml")])
    assert got == want
    nested = {"steps": 7, "policy": {"lr": 1e-4, "warmup_steps": 2, "lm_head_fp32": True},
              "algo": {"preset": "grpo"}, "data": {"require_trace": False}, "metrics": {"log_every": 3},
              "rollout": {"lm_head_fp32": True}, "eval": {"protocol": {"samples_per_row": 2}}, "recipe": "tiny_cpu"}
    (tmp_path / "run.json").write_text(json.dumps(nested))
    assert parse_config(["--config", str(tmp_path / "run.json")]) == want  # the file names its recipe
    # the command line wins over the file, whatever the order of the arguments
    a = parse_config(["steps=9", "--config", str(tmp_path / "run.yaml"), "--recipe", "tiny_cpu"])
    assert a == dataclasses.replace(want, steps=9)


def test_a_saved_run_config_replays_the_run(tmp_path):
    cfg = parse_config(["--recipe", "tiny_cpu", *OVERRIDES, f"run_dir={tmp_path / 'a'}"])
    path = save_run_config(cfg, tmp_path / "a", steps=7, lr=1e-4)
    assert parse_config(["--config", str(path)]) == cfg  # no recipe: the file is the whole config
    assert parse_config(["--recipe", "qwen25_7b", "--config", str(path)]) == cfg  # every field set on any recipe
    assert parse_config(["--config", str(path), "steps=8"]).steps == 8


def test_a_recipe_from_a_file_outside_the_repository(tmp_path):
    (tmp_path / "mine.py").write_text(
        "import dataclasses\nfrom configs import get_recipe\n\n"
        "def recipe():\n    return dataclasses.replace(get_recipe('tiny_cpu'), name='mine', steps=3)\n\n"
        "def longer():\n    return dataclasses.replace(recipe(), steps=30)\n")
    cfg = parse_config(["--recipe", str(tmp_path / "mine.py"), "policy.lr=0.01"])
    assert (cfg.name, cfg.steps, cfg.policy.lr) == ("mine", 3, 0.01)
    assert parse_config(["--recipe", f"{tmp_path / 'mine.py'}:longer"]).steps == 30


@pytest.mark.parametrize("text,argv,msg", [
    ("policy:\n  lrr: 1\n", [], r"policy.lrr \(in .*bad.yaml\): unknown field 'lrr' of PolicyConfig; valid: \["),
    ("steps: seven\n", [], r"steps \(in .*bad.yaml\)='seven': expected an integer"),
    ("steps: 2.5\n", [], r"steps \(in .*bad.yaml\)=2.5: expected an integer"),
    ("policy: {tp: true}\n", [], r"policy.tp \(in .*bad.yaml\)=True: expected an integer"),
    ("- steps\n", [], r"bad.yaml: expected a mapping of section.field: value, got list"),
    ("steps: [1\n", [], r"bad YAML in .*bad.yaml"),
    ("steps: 0\n", [], r"steps must be an int >= 1"),  # the run's own validation, once
    ("{}\n", ["--recipe", "nope"], r"unknown recipe 'nope'"),
    ("{}\n", ["--recipe", "runs/x/run_config.json"], r"a config file such as runs/x/run_config.json goes in --config"),
    ("{}\n", ["--recipe", "/nonexistent/r.py"], r"no recipe file at --recipe /nonexistent/r.py"),
])
def test_bad_config_files_are_one_line_refusals(tmp_path, text, argv, msg):
    import re

    (tmp_path / "bad.yaml").write_text(text)
    rc, out, err = run_train(["--config", str(tmp_path / "bad.yaml"), *argv, "--check"])
    assert rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(msg, err), err


def test_check_runs_on_a_config_file(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    rc, out, err = run_train(["--config", str(tmp_path / "run.yaml"), "--check"])
    assert rc == 0 and out.startswith("check OK: tiny_cpu (algo.preset=grpo, 7 steps)") and "lr 0.0001" in out, err
    assert main(["--config", str(tmp_path / "missing.yaml"), "--check"]) == 2
