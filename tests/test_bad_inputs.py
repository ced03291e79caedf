"""The bad-input corpus: every refusal at the entry/load boundary is ONE line on stderr,
``error: <what> in <where>: <expected>``, with exit code 2, across the config, the command line, model
dirs, run dirs / checkpoints and data files. The entry points run in-process through main(argv) (fast);
a few run as real subprocesses (the console script, torchrun's ranks, --debug)."""
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

REPO = Path(__file__).resolve().parents[1]


def run_main(module: str, argv: list[str]) -> tuple[int, str, str]:
    import importlib

    main = importlib.import_module(f"red_megatron.cli.{module}").main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def assert_refused(rc: int, err: str, *expected: str) -> None:
    assert rc == 2, (rc, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, nothing else
    for e in expected:
        assert e in err, (e, err)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "RED_DEBUG", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)


# --- the command line and the config: red-train --check on the tiny checkpoint ------------------------
CONFIG_CASES = [
    (["--recipe", "nosuch"], ["unknown recipe 'nosuch'", "tiny_cpu"]),
    (["policy.tpp=2"], ["unknown field 'tpp' of PolicyConfig", "valid:"]),
    (["policy.tp=two"], ["policy.tp='two': expected an integer"]),
    (["resume=maybe"], ["resume='maybe': expected a boolean"]),
    (["steps"], ["override 'steps': expected dotted.field=value"]),
    (["policy=2"], ["policy is a section"]),
    (["nosection.x=1"], ["unknown field 'nosection' of RunConfig"]),
    (["steps=0"], ["RunConfig.steps must be an int >= 1"]),
    (["rollout.top_p=1.5"], ["RolloutConfig.top_p must be in (0, 1]"]),
    (["rollout.tp_infer=2"], ["executor must be 'external_launcher'", "got 'uni'"]),
    (["rollout.max_model_len=8"], ["RolloutConfig.max_model_len must be >= 16"]),
    (["data.schema=csv"], ["DataConfig.schema must be one of"]),
    (["data.global_batch_size=0"], ["DataConfig.global_batch_size must be an int >= 1"]),
    (["policy.dtype=fp8"], ["PolicyConfig.dtype must be one of"]),
    (["policy.lr=-1"], ["PolicyConfig.lr must be > 0"]),
    (["algo.preset=nosuch"], ["nosuch"]),
    (["reward.verify_fn=nocolon"], ["RewardConfig.verify_fn must be 'package.module:function'"]),
    (["reward.verify_fn=nosuch.module:fn"], ["unimportable module 'nosuch.module' in reward.verify_fn"]),
    (["reward.verify_fn=os.path:nosuchfn"], ["no function 'nosuchfn' in reward.verify_fn"]),
    (["data.chat_template=hello"], ["unknown chat template 'hello' in data.chat_template", "Jinja"]),
    (["data.chat_template=/nonexistent/t.jinja"], ["missing chat template file in data.chat_template"]),
    (["policy.tp=2", "--world-size", "3"], ["policy.tp=2", "world size 3"]),
    (["policy.tp=3", "--world-size", "3"], ["policy.tp=3", "heads"]),
    (["data.global_batch_size=3", "--world-size", "2"], ["global_batch_size=3", "data-parallel size 2"]),
    (["--world-size", "0"], ["bad world size in --world-size=0"]),
    # refused by the trainer once megatron had built the policy (after an INFO line): now before anything starts
    (["algo.preset=sft", "eval.every=1"], ["eval.every=1 evaluates with rank 0's own engine", "not 'sft'"]),
    (["eval.every=1", "rollout.tp_infer=2", "rollout.executor=external_launcher", "--world-size", "2"],
     ["eval.every=1", "rollout.tp_infer=1"]),
]


@pytest.mark.parametrize("extra,expected", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_config_and_command_line_refusals(tiny_ckpt_dir, extra, expected):
    rc, out, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--check", *extra])
    assert_refused(rc, err, *expected)
    assert out == ""


def test_world_size_from_a_bad_environment(tiny_ckpt_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    rc, _, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--check"])
    assert_refused(rc, err, "bad world size in WORLD_SIZE='two'")


# --- model directories -----------------------------------------------------------------------------
def _truncate(p: Path, keep: int) -> None:
    p.write_bytes(p.read_bytes()[:keep])


def _damage(name: str, d: Path) -> None:
    cfg = d / "config.json"
    st = d / "model.safetensors"
    if name == "no_config":
        cfg.unlink()
    elif name == "truncated_config":
        _truncate(cfg, 40)
    elif name == "config_not_object":
        cfg.write_text("[1, 2]")
    elif name == "bad_arch":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "architectures": ["GPT2LMHeadModel"]}))
    elif name == "no_heads":
        c = json.loads(cfg.read_text())
        del c["num_attention_heads"]
        cfg.write_text(json.dumps(c))
    elif name == "sliding_window":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "use_sliding_window": True}))
    elif name == "no_tokenizer":
        (d / "tokenizer.json").unlink()
    elif name == "truncated_tokenizer":
        _truncate(d / "tokenizer.json", 100)
    elif name == "no_chat_template":
        t = json.loads((d / "tokenizer_config.json").read_text())
        t.pop("chat_template", None)
        (d / "tokenizer_config.json").write_text(json.dumps(t))
        for f in ("chat_template.jinja", "chat_template.json"):
            (d / f).unlink(missing_ok=True)
    elif name == "truncated_safetensors":
        _truncate(st, st.stat().st_size // 2)
    elif name == "tiny_safetensors":
        _truncate(st, 4)
    elif name == "garbage_header":
        st.write_bytes((20).to_bytes(8, "little") + b"not json at all!!!!!" + b"\0" * 64)
    elif name == "no_weights":
        st.unlink()
    elif name == "index_names_absent_shard":
        names = json.loads(st.read_bytes()[8:8 + int.from_bytes(st.read_bytes()[:8], "little")])
        st.unlink()
        wm = {k: "model-00001-of-00002.safetensors" for k in names if k != "__metadata__"}
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    else:
        raise AssertionError(name)


MODEL_CASES = [  # (damage, --check is enough, expected)
    ("no_config", True, ["missing config.json in"]),
    ("truncated_config", True, ["unreadable config.json in", "config.json", "truncated?"]),
    ("config_not_object", True, ["unreadable config.json in", "expected a JSON object, got list"]),
    ("bad_arch", True, ["unsupported model in", "GPT2LMHeadModel"]),
    ("no_heads", True, ["unsupported model in", "num_attention_heads"]),
    ("sliding_window", True, ["unsupported model in", "use_sliding_window"]),
    ("no_tokenizer", True, ["missing tokenizer files in", "tokenizer.json"]),
    ("truncated_tokenizer", True, ["unreadable tokenizer in", "tokenizer.json"]),
    ("no_chat_template", True, ["no chat template in", "tokenizer_config.json", "data.chat_template"]),
    ("truncated_safetensors", False, ["truncated weights file in", "model.safetensors"]),
    ("tiny_safetensors", False, ["truncated weights file in", "only 4 bytes"]),
    ("garbage_header", False, ["unreadable weights file in", "model.safetensors"]),
    ("no_weights", False, ["missing weights in", "model.safetensors"]),
    ("index_names_absent_shard", False, ["missing weights shard in", "model-00001-of-00002.safetensors"]),
]


@pytest.mark.parametrize("damage,check,expected", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_dir_refusals(tmp_path, tiny_ckpt_dir, damage, check, expected):
    d = tmp_path / "model"
    shutil.copytree(tiny_ckpt_dir, d)
    _damage(damage, d)
    # the weight cases run without --check: refused by the start-time checks, before megatron is imported
    argv = ["--recipe", "tiny_cpu", f"model_dir={d}"] + (["--check"] if check else [])
    rc, _, err = run_main("train", argv)
    assert_refused(rc, err, *expected)
    if damage != "no_config":
        assert str(d) in err  # the file (or dir) is named


def test_missing_model_dir_is_named(tmp_path):
    rc, _, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tmp_path / 'nope'}", "--check"])
    assert_refused(rc, err, "no model directory in model_dir=", "nope")


# --- data files, through red-eval (loads the data before any engine is built) --------------------------
def _rows(n: int, bad: set[int] = frozenset()) -> list[str]:
    out = []
    for i in range(n):
        rec = {"data_source": "t", "prompt": [{"role": "user", "content": f"Box {i}."}],
               "reward_model": {"ground_truth": str(i)}}
        if i in bad:
            del rec["reward_model"]
        out.append(json.dumps(rec))
    return out


DATA_CASES = [
    ("missing.jsonl", None, ["data file not found"]),
    ("bad_utf8.jsonl", lambda p: p.write_bytes(("\n".join(_rows(1)) + "\n").encode() + b'{"x": "\xff\xfe"}\n'),
     ["bad_utf8.jsonl line 2: not UTF-8", "byte 0xff"]),
    ("bad_json.jsonl", lambda p: p.write_text("\n".join(_rows(2) + ['{"prompt": [']) + "\n"),
     ["bad_json.jsonl line 3: not valid JSON"]),
    ("array.jsonl", lambda p: p.write_text("\n".join(_rows(1) + ["[1, 2]"]) + "\n"),
     ["array.jsonl line 2: expected a JSON object, got list"]),
    ("three_bad.jsonl", lambda p: p.write_text("\n".join(_rows(5, {1, 2, 4})) + "\n"),
     ["3 bad row(s) in", "row 1 (line 2)", "row 2 (line 3)", "row 4 (line 5)", "reward_model.ground_truth"]),
    ("many_bad.jsonl", lambda p: p.write_text("\n".join(_rows(30, set(range(30)))) + "\n"),
     ["20 bad row(s) in", "stopped at the first 20", "row 0 (line 1)", "row 19 (line 20)"]),
    ("data.csv", lambda p: p.write_text("a,b\n"), ["unsupported data file type '.csv'"]),
    ("empty.jsonl", lambda p: p.write_text("\n"), ["no rows"]),
    ("trunc.parquet", lambda p: p.write_bytes(b"PAR1\x00\x00garbage"), ["unreadable parquet file in", "trunc.parquet"]),
    ("empty_gold.jsonl", lambda p: p.write_text(json.dumps({"prompt": [{"role": "user", "content": "x"}],
                                                            "reward_model": {"ground_truth": " "}}) + "\n"),
     ["empty_gold.jsonl row 0 (line 1)", "empty gold answer"]),
    ("bad_role.jsonl", lambda p: p.write_text(json.dumps({"prompt": [{"role": "robot", "content": "x"}],
                                                          "reward_model": {"ground_truth": "1"}}) + "\n"),
     ["bad_role.jsonl row 0 (line 1)", "role must be one of"]),
]


@pytest.mark.parametrize("name,write,expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_file_refusals(tmp_path, tiny_ckpt_dir, name, write, expected):
    p = tmp_path / name
    if write is not None:
        write(p)
    rc, _, err = run_main("eval", ["--model", str(tiny_ckpt_dir), f"eval.data_path={p}", "--out", str(tmp_path / "o")])
    assert_refused(rc, err, *expected)


@pytest.mark.parametrize("argv,expected", [
    (["eval.protocol.temp=1"], ["eval.protocol.temp=1: unknown field 'temp' of EvalConfig"]),
    (["rollout.tp_infer=x"], ["rollout.tp_infer='x': expected an integer"]),
    (["data.too_long_prompt=zz"], ["too_long_prompt", "zz"]),
    (["protocol.temperature=0.6"], ["unknown field 'protocol' of RunConfig"]),  # red-eval's old private sections are gone
])
def test_eval_override_refusals(tiny_ckpt_dir, argv, expected):
    rc, _, err = run_main("eval", ["--model", str(tiny_ckpt_dir), *argv])
    assert_refused(rc, err, *expected)


def test_eval_missing_model(tmp_path):
    rc, _, err = run_main("eval", ["--model", str(tmp_path / "nope")])
    assert_refused(rc, err, "no model directory in --model=")


# --- run dirs and checkpoints (red-export; the failures before any model is built) ---------------------
def _run_dir(tmp_path: Path, model_dir: Path, config_text: str | None = None) -> Path:
    import dataclasses

    from configs import get_recipe
    from red_megatron.overrides import apply_overrides

    d = tmp_path / "run"
    d.mkdir()
    cfg = apply_overrides(get_recipe("tiny_cpu"), [f"model_dir={model_dir}", f"run_dir={d}"])
    text = json.dumps({"config": dataclasses.asdict(cfg), "effective": {}}) if config_text is None else config_text
    (d / "run_config.json").write_text(text)
    return d


def test_export_refusals(tmp_path, tiny_ckpt_dir):
    rc, _, err = run_main("export", [str(tmp_path / "nope")])
    assert_refused(rc, err, "no run directory in", "nope")
    empty = tmp_path / "empty"
    (empty / "stage0_sft").mkdir(parents=True)
    (empty / "stage0_sft" / "run_config.json").write_text("{}")
    rc, _, err = run_main("export", [str(empty)])
    assert_refused(rc, err, "missing run_config.json in", "export one of them: ['stage0_sft']")
    d = _run_dir(tmp_path, tiny_ckpt_dir)
    rc, _, err = run_main("export", [str(d)])
    assert_refused(rc, err, "no checkpoint in", "checkpoints")
    (d / "checkpoints" / "step_00000002").mkdir(parents=True)
    (d / "checkpoints" / "step_00000002" / "meta.json").write_text("{}")
    rc, _, err = run_main("export", [str(d), "--step", "7"])
    assert_refused(rc, err, "no checkpoint of step 7", "saved steps [2]")
    rc, _, err = run_main("export", [str(d), "policy.tpp=1"])
    assert_refused(rc, err, "unknown field 'tpp' of PolicyConfig")
    rc, _, err = run_main("export", [str(d), "policy.tp=2"])  # one process cannot hold TP=2
    assert_refused(rc, err, "bad layout in policy.tp=2", "world size 1")


def test_truncated_run_config(tmp_path, tiny_ckpt_dir):
    d = _run_dir(tmp_path, tiny_ckpt_dir, config_text='{"config": {"name": "red", "run_di')
    rc, _, err = run_main("export", [str(d)])
    assert_refused(rc, err, "unreadable run config in", "run_config.json")


def test_checkpoint_missing_parts_are_named(tmp_path, monkeypatch):
    from red_megatron.policy import checkpoint
    from red_megatron.policy.checkpoint import _read_meta

    ck = tmp_path / "step_00000001"
    (ck / "dist").mkdir(parents=True)
    (ck / "meta.json").write_text('{"step": 1')
    with pytest.raises(ValueError, match=r"unreadable checkpoint part in .*meta.json"):
        _read_meta(ck)
    # common.pt: megatron-core 0.16 writes it and the save lists it in meta.json (0.19 does not write it)
    (ck / "meta.json").write_text('{"step": 1, "dist_parts": [".metadata", "common.pt", "metadata.json"]}')
    for part in (".metadata", "common.pt", "metadata.json"):
        with pytest.raises(ValueError, match=rf"missing checkpoint part in .*: expected dist/{part}"):
            _read_meta(ck)
        (ck / "dist" / part).write_text("x")
    with pytest.raises(ValueError, match=r"expected dist/\*\.distcp"):
        _read_meta(ck)
    (ck / "dist" / "__0_0.distcp").write_text("x")
    # every part present, but these stand-ins do not parse: the first read names the file
    with pytest.raises(ValueError, match=r"unreadable checkpoint part in .*dist/\.metadata"):
        _read_meta(ck)
    # (a truncated shard or common.pt is tests/test_cli_export.py's, on a real checkpoint); the rest is
    # which parts a resume requires, with the contents' check out of the way
    monkeypatch.setattr(checkpoint, "_check_dist_files", lambda d: None)
    assert _read_meta(ck)["step"] == 1
    (ck / "dist" / "common.pt").unlink()
    # a 0.19 save lists no common.pt and passes without it; a meta.json without dist_parts is 0.16's older form
    (ck / "meta.json").write_text('{"step": 1, "dist_parts": [".metadata", "metadata.json"]}')
    assert _read_meta(ck)["step"] == 1
    (ck / "meta.json").write_text('{"step": 1}')
    with pytest.raises(ValueError, match=r"expected dist/common\.pt"):
        _read_meta(ck)


# --- launch -----------------------------------------------------------------------------------------
def test_launch_refusals(tmp_path):
    rc, _, err = run_main("launch", ["--recipe", "tiny_cpu", "--run-dir", str(tmp_path), "--env", "NOEQUALS",
                                     "--dry-run"])
    assert_refused(rc, err, "bad environment entry 'NOEQUALS' in --env")
    rc, _, err = run_main("launch", ["--recipe", "tiny_cpu", "--run-dir", str(tmp_path), "--nproc", "3", "policy.tp=2",
                                     "--dry-run"])
    assert_refused(rc, err, "launch refused", "policy.tp=2")


# --- the handler itself: rank 0 only, --debug / RED_DEBUG ----------------------------------------------
def test_other_ranks_exit_2_silently(tiny_ckpt_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    rc, out, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "policy.tpp=1"])
    assert (rc, out, err) == (2, "", "")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(tiny_ckpt_dir, monkeypatch, how):
    argv = ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "--check", "data.chat_template=hello"]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("RED_DEBUG", "1")
    rc, _, err = run_main("train", argv)
    assert rc == 2 and "Traceback (most recent call last)" in err and "check_chat_template" in err
    assert err.rstrip("\n").splitlines()[-1].startswith("error: unknown chat template 'hello'")


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in ("RED_DEBUG", "RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}  # an inherited PYTHONPATH kept: the compat tier's megatron-core


def _console(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", f"red_megatron.cli.{name.split('-')[1]}"]


def _bad_rows(tmp: Path) -> Path:
    p = tmp / "three_bad.jsonl"
    p.write_text("\n".join(_rows(5, {1, 2, 4})) + "\n")
    return p


# (id, command (tmp dir, tiny model dir), what the one line says, the run dir whose library.log must exist)
# Every entry point once, each refusing fast; then a refusal raised after the first step (megatron ran and
# printed its noise, the run logged an INFO line and a progress line: both on stdout).
ENTRY_CASES = [
    ("red-train flag", lambda t, m: _console("red-train") + ["--recipe", "tiny_cpu", f"model_dir={m}", "--nosuch"],
     ["unrecognized arguments: --nosuch in the command line of red-train"], None),
    ("red-eval data row", lambda t, m: _console("red-eval") + ["--model", str(m), f"eval.data_path={_bad_rows(t)}",
                                                               "--out", str(t / "o")],
     ["3 bad row(s) in", "row 1 (line 2)"], "o"),
    ("red-export run dir", lambda t, m: _console("red-export") + [str(t / "nope")], ["no run directory in"], None),
    ("red-launch env", lambda t, m: _console("red-launch") + ["--recipe", "tiny_cpu", "--run-dir", str(t), "--env",
                                                                 "NOEQUALS", "--dry-run"],
     ["bad environment entry 'NOEQUALS' in --env"], None),
    ("red-study flag", lambda t, m: _console("red-study") + ["--nosuch"],
     ["unrecognized arguments: --nosuch in the command line of red-study"], None),
    ("demo override", lambda t, m: [sys.executable, str(REPO / "scripts" / "demo.py"), "--out", str(t / "demo"),
                                    "policy.tpp=1"], ["unknown field 'tpp' of PolicyConfig"], "demo/run"),
    ("prepare_data flags", lambda t, m: [sys.executable, str(REPO / "scripts" / "prepare_data.py")],
     ["the following arguments are required: --source, --out"], None),
    ("red-train after the first step", lambda t, m: _console("red-train") + [  # sft: no engine to build
        "--recipe", "tiny_cpu", f"model_dir={m}", "--run-dir", str(t / "run"), "steps=2", "policy.lr=1e30",
        "algo.preset=sft", "use_preset_schedule=false"],
     ["non-finite policy entropies in step 2", "weights diverged", "policy.lr=1e+30"], "run"),
]


@pytest.mark.parametrize("case", ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_every_entry_point_refuses_in_one_line(tmp_path, tiny_ckpt_dir, case):
    """Real processes: stderr is the one line (no INFO line, no library noise, no traceback), exit 2; what the
    libraries printed (megatron's config dumps and warnings) is in the run's log."""
    _, command, expected, log_dir = case
    p = subprocess.run(command(tmp_path, tiny_ckpt_dir), cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr[-3000:]
    for e in expected:
        assert e in p.stderr, (e, p.stderr)
    if log_dir is not None:
        assert (tmp_path / log_dir / "logs" / "library.log").is_file()
    if log_dir == "run":  # megatron ran: its lines are in the log, none on the console
        assert "megatron" in (tmp_path / "run" / "logs" / "library.log").read_text()


def test_under_torchrun_only_rank0_prints(tiny_ckpt_dir):
    """Rank 1 waits for torchrun to stop it once rank 0 has printed and exited: it used to exit at once,
    and a loaded machine let torchrun stop rank 0 before its line (the flaky 'rank-0 print' case)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "scripts" / "train.py"), "--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}",
           "data.chat_template=hello"]
    env = {**_env(), "RED_REFUSAL_GRACE_S": "240"}  # however slow rank 0 is to refuse, rank 1 stays silent
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    both = p.stdout + p.stderr
    assert p.returncode != 0
    assert both.count("error: unknown chat template 'hello' in data.chat_template") == 1, both[-3000:]
    assert "rank 0 did not report it" not in both, both[-3000:]
    assert "exitcode  : 2" in both or "exit code 2" in both or "exitcode: 2" in both, both[-3000:]


def test_a_rank_that_alone_refuses_prints_after_the_grace(tiny_ckpt_dir, monkeypatch):
    """A refusal on rank 1 only (rank 0 went on, e.g. into a collective): after the grace, rank 1 prints it."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RED_REFUSAL_GRACE_S", "0.2")
    rc, out, err = run_main("train", ["--recipe", "tiny_cpu", f"model_dir={tiny_ckpt_dir}", "policy.tpp=1"])
    assert rc == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("error: policy.tpp=1: unknown field") and "(rank 1; rank 0 did not report it)" in err
