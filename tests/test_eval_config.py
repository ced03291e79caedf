"""red-eval on the run config (issue 28, item 6): its settings are RunConfig fields, resolved and refused by
red-train's code (recipe -> --config -> section.field=value); it re-declares none of them as options (it
re-declared ~25 config defaults as argparse options, with other defaults: max_prompt_tokens 4096 against
data's 1024, and its own section names)."""
from __future__ import annotations

import json

import pytest

from red_megatron.cli.eval import build_parser, default_data, resolve_eval_config
from tests.test_bad_inputs import run_main

OWN_OPTIONS = {"help", "debug", "version", "model", "recipe", "config", "name", "out", "table", "include", "verbose",
               "overrides"}


def test_red_eval_declares_no_config_field_as_an_option():
    dests = {a.dest for a in build_parser()._actions}  # noqa: SLF001 - argparse's list of what it parses
    assert dests == OWN_OPTIONS, dests - OWN_OPTIONS


def test_the_evaluation_settings_are_the_run_configs(tmp_path):
    cfg = resolve_eval_config("m", None, None, ["eval.protocol.temperature=0.7", "data.problem_key=question",
                                                "rollout.dtype=float32", "reward.num_workers=1"])
    assert cfg.model_dir == "m" and cfg.eval.data_path == default_data()
    assert (cfg.eval.protocol.temperature, cfg.data.problem_key, cfg.rollout.dtype, cfg.reward.num_workers) == \
        (0.7, "question", "float32", 1)
    from configs import get_recipe

    tiny = get_recipe("tiny_cpu")
    cfg = resolve_eval_config("m", "tiny_cpu", None, [])
    assert (cfg.eval, cfg.data, cfg.rollout, cfg.reward) == (tiny.eval, tiny.data, tiny.rollout, tiny.reward)
    f = tmp_path / "eval.json"
    f.write_text(json.dumps({"recipe": "tiny_cpu", "eval": {"protocol": {"limit": 3}}, "rollout.top_p": 0.9}))
    cfg = resolve_eval_config("m", None, str(f), ["eval.protocol.max_tokens=8"])
    assert (cfg.eval.protocol.limit, cfg.eval.protocol.max_tokens, cfg.rollout.top_p) == (3, 8, 0.9)


@pytest.mark.parametrize("override", ["eval.protocol.temperature=9", "algo.eps_hi=0", "rollout.top_p=2",
                                      "eval.protocol.limt=2", "data.too_long_prompt=zz"])
def test_red_eval_and_red_train_refuse_alike(tiny_ckpt_dir, override):
    rc_e, _, err_e = run_main("eval", ["--model", str(tiny_ckpt_dir), "--recipe", "tiny_cpu", override])
    rc_t, _, err_t = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--check", override])
    assert rc_e == rc_t == 2 and err_e == err_t and err_e.count("\n") == 1, (err_e, err_t)
