"""benchmarks/gpu_pending.sh: the one GPU call of issue 18, smoke-tested on the CPU.

``gpu_pending.sh smoke`` runs the same parts as ``all`` (policy, projection, kernel, refit, step)
at tiny shapes with CUDA hidden, so a typo or a broken code path fails here instead of in the
GPU window. The GPU commands themselves are checked against the scripts' declared options.
The smoke runs once, on the megatron-core the GPU machine has (0.19.2, unpacked by setup_env.sh; see
tests/test_mcore_compat.py), else on this venv's: running it on both cost a minute of CI for no
path the GPU window takes.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_pending.sh"
PARTS = ["policy", "projection", "moe", "kernel", "lmhead", "refit", "step", "cp"]
JSONS = {"policy": "policy_throughput.json", "projection": "projection.json", "kernel": "kernel_bench.json",
         "refit": "refit_gpu_bench.json", "step": "step_throughput.json", "cp": "cp_attention.json"}
EMBEDDED = {"lmhead": "summary:lm_head_bench.json",  # folded into summary.json (the 8-file limit)
            "moe": "summary:moe_layer_bench.json"}


def _run(mode: str, out: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), mode], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from tests.test_mcore_compat import ALT

    out = tmp_path_factory.mktemp("gpu_pending_smoke")
    alt = (ALT / "megatron" / "core").is_dir()
    res = _run("smoke", out, **({"PYTHONPATH": str(ALT)} if alt else {}))
    return res, out


@pytest.mark.slow
def test_smoke_ran_on_the_gpu_machines_megatron_core(smoke):
    """Every benchmark JSON that records megatron-core's version names the GPU machine's."""
    from tests.test_mcore_compat import ALT, VERSION

    if not (ALT / "megatron" / "core").is_dir():
        pytest.skip(f"megatron-core {VERSION} not unpacked at {ALT}: the smoke ran on this venv's version")
    res, out = smoke
    assert res.returncode == 0, res.stdout[-3000:]
    parts = json.loads((out / "summary.json").read_text())["parts"]
    checked = 0
    for r in parts:
        text = (out / r["json"]).read_text()
        if '"megatron_core"' in text:  # the benchmarks' run_meta; projection.json is CPU arithmetic
            assert f'"megatron_core": "{VERSION}' in text, (r["part"], text[:400])
            checked += 1
    assert checked >= 3, parts


@pytest.mark.slow
def test_smoke_runs_every_part_and_writes_its_json(smoke):
    res, out = smoke
    assert res.returncode == 0, f"gpu_pending.sh smoke failed:\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "smoke" and [p["part"] for p in summary["parts"]] == PARTS
    for p in summary["parts"]:
        want = "summary.json" if p["part"] in EMBEDDED else JSONS[p["part"]]
        assert p["status"] == "ok" and p["json"] == want and p["errors_inside"] == 0, p
        assert 0 <= p["seconds"] <= p["budget_s"]
    assert summary["seconds"] <= summary["total_budget_s"]
    # what comes back from the device machine: at most 8 files, none deeper than $OUT itself
    files = sorted(x.name for x in out.iterdir())
    assert files == sorted(["summary.json", "gpu_pending.log", *JSONS.values()])
    log = (out / "gpu_pending.log").read_text()
    assert all(f"=== {p}: ok" in log for p in PARTS) and "| part | status |" in res.stdout


@pytest.mark.slow
def test_smoke_jsons_hold_the_measurements(smoke):
    _, out = smoke
    j = {p: json.loads((out / name).read_text()) for p, name in JSONS.items()}
    runs = j["policy"]["runs"]
    assert {r["impl"] for r in runs} == {"mcore_sdpa_red", "mcore_sdpa", "hf_sdpa"}
    assert ("mcore_sdpa_red", 1, 32) in {(r["impl"], r["batch"], r["seq"]) for r in runs}  # the --extra row
    for r in runs:
        assert r["ms"] > 0 and r["tokens_per_s"] > 0 and "mfu" in r and "peak_gib" in r, r
    assert j["policy"]["parity"] and "error" not in j["policy"]["parity"][0]
    assert {"fit", "projection", "calibrated_on", "loo_hf"} <= set(j["projection"])
    k = j["kernel"]
    assert "errors" not in k and k["meta"]["device"] == "cpu"
    row = k["table"][0]
    assert (row["n"], row["v"]) == (64, 512) and row["roofline_ms"] > 0
    assert all(row[v]["ms"] > 0 for v in ("red_loss", "red_loss_gif", "naive"))
    for mode in ("plain", "grad_in_forward"):  # the kernel against float64, bf16 logits
        c = k["correctness"][mode]
        assert c["logp_rel"] < 1e-3 and c["entropy_rel"] < 1e-3 and c["grad_rel"] < 2e-2 and c["grad_finite"]
        assert c["padded_grad_maxabs"] == 0.0
    assert k["two_shard"]["grad_rel"] < 1e-2 and "grad_in_place_ms" in k["diag_inplace"]
    refit = j["refit"]
    assert refit["check"]["exact"] and [r["bucket"] for r in refit["runs"]] == ["256MiB", "whole"]
    assert all(r["seconds"] > 0 and r["GBps"] > 0 for r in refit["runs"])
    full, over = j["step"]["shapes"]  # the second is over its state budget, as 7b is on one GPU
    assert full["shape"] == "smoke" and "skipped_stages" not in full
    assert all(full[s]["seconds"] > 0 for s in ("old_logprob", "update", "refit_stream"))
    assert over["shape"] == "smoke_untied" and list(over["skipped_stages"]) == ["update"] and "update" not in over
    assert over["old_logprob"]["seconds"] > 0 and over["refit_stream"]["seconds"] > 0
    embedded = {p["part"]: p for p in json.loads((out / "summary.json").read_text())["parts"]}
    moe = embedded["moe"]["data"]  # both implementations, every expert reached by the backward
    assert moe["meta"]["shape"] == "smoke" and moe["config"]["model_type"] == "qwen3_moe"
    assert [(r["impl"], r["batch"], r["seq"]) for r in moe["runs"]] == [("mcore", 2, 16), ("hf", 2, 16)]
    for r in moe["runs"]:
        assert "error" not in r and r["ms"] > 0 and r["tokens_per_s"] > 0, r
        assert r["expert_tensors"] > 0 and r["expert_tensors_with_grad"] == r["expert_tensors"], r
        assert 0 < r["layer_active_params"] < r["layer_params"], r
    lm = embedded["lmhead"]["data"]
    rows = {(r["pass"], r["variant"]): r for r in lm["rows"]}
    assert len(rows) == 8 and lm["meta"]["device"] == "cpu"  # 2 passes x 4 variants, each measured
    for (p, v), r in rows.items():
        assert "error" not in r and r["ms"] > 0 and r["peak_gib"] >= 0, r
        if v != "unfused":  # agreement with the unfused head (bf16 logits; fp32 accumulation in the fused one)
            assert r["logp_maxabs"] < 1e-3 and (p == "old_logprob" or r["dW_rel"] < 2e-2), r


def _dry(mode: str, tmp_path) -> list[tuple[str, int, str, list[str]]]:
    res = _run(mode, tmp_path / "dry", GPU_PENDING_DRY_RUN="1", timeout=60)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    return [(p, int(b), j, shlex.split(c)) for p, b, j, c in rows]


def test_gpu_commands_use_options_the_scripts_declare_and_fit_eight_minutes(tmp_path):
    rows = _dry("all", tmp_path)
    assert [r[0] for r in rows] == PARTS
    assert sum(r[1] for r in rows) <= 480 - 20  # the 8 minutes, the wheel install left room
    from benchmarks.policy_throughput import SHAPES

    for part, _, jname, cmd in rows:
        script = ROOT / cmd[0]
        assert script.is_file(), cmd
        src = script.read_text()
        for opt in (a for a in cmd[1:] if a.startswith("--")):
            assert re.search(rf"add_argument\(\s*\"{re.escape(opt)}\"", src), f"{part}: {script.name} has no {opt}"
        if "--out" in cmd:  # the JSON lands where the summary looks for it
            assert cmd[cmd.index("--out") + 1] == str(tmp_path / "dry") and JSONS[part] == jname
        if part in EMBEDDED:  # written to the scratch folder, then folded into summary.json
            assert jname == EMBEDDED[part] and cmd[cmd.index("--json") + 1] == "<scratch>/" + jname.split(":")[1]
        for flag in ("--shapes", "--shape"):
            if flag in cmd and part not in ("kernel", "moe"):
                assert set(cmd[cmd.index(flag) + 1].split(",")) <= set(SHAPES), cmd
    cmd = dict((r[0], r[3]) for r in rows)
    assert cmd["kernel"][cmd["kernel"].index("--shape") + 1] == "16384x151936" and "--no-sweep" in cmd["kernel"]
    sizes = cmd["lmhead"][cmd["lmhead"].index("--sizes") + 1].split(",")  # N=16,384 at D=1,536/3,584, a longer N
    assert {"16384x1536x151936", "16384x3584x151936"} <= set(sizes) and any(int(s.split("x")[0]) > 16384 for s in sizes)
    assert cmd["policy"][cmd["policy"].index("--layouts") + 1] == "1x8192" and "hf_sdpa" in " ".join(cmd["policy"])
    assert cmd["step"][cmd["step"].index("--shapes") + 1] == "1.5b,7b" and "--fallback-stages" in cmd["step"]
    assert len(cmd["refit"][cmd["refit"].index("--buckets") + 1].split(",")) == 2
    from benchmarks.moe_layer_bench import MOE_SHAPES  # a Qwen3-30B-A3B layer or two, both implementations

    moe = cmd["moe"]
    assert moe[moe.index("--shape") + 1] == "30b-a3b" and MOE_SHAPES["30b-a3b"]["num_experts"] == 128
    assert 1 <= int(moe[moe.index("--layers") + 1]) <= 2 and moe[moe.index("--impls") + 1] == "mcore,hf"


def test_bad_mode_or_part_is_refused(tmp_path):
    res = _run("kernels", tmp_path, timeout=60)
    assert res.returncode == 2 and "unknown mode 'kernels'" in res.stderr
    res = _run("all", tmp_path, GPU_PENDING_PARTS="policy refti", timeout=60)
    assert res.returncode == 2 and "unknown part 'refti'" in res.stderr


def test_each_part_is_a_mode_of_its_own(tmp_path):
    for part in PARTS:
        rows = _dry(part, tmp_path)
        assert [r[0] for r in rows] == [part], (part, rows)


def test_a_part_past_its_time_is_cut_and_the_rest_skipped(tmp_path):
    """A stand-in interpreter that hangs on every benchmark: the first part hits the call's deadline,
    the rest are skipped for lack of time, and the summary says so (exit 1)."""
    shim = tmp_path / "python"
    shim.write_text(f'#!/bin/sh\ncase "$1" in -|-c) exec {shlex.quote(sys.executable)} "$@" ;; esac\nexec sleep 60\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    res = _run("smoke", out, PYTHON=str(shim), GPU_PENDING_TOTAL_S="11", GPU_PENDING_MIN_PART_S="3", timeout=120)
    assert res.returncode == 1, res.stdout
    parts = json.loads((out / "summary.json").read_text())["parts"]
    assert parts[0]["part"] == "policy" and parts[0]["status"].startswith("timeout") and parts[0]["rc"] == 124
    assert parts[0]["seconds"] <= 8 and parts[0]["json"] is None
    assert all(p["status"].startswith("skipped") for p in parts[1:]), parts


def test_gpu_mode_without_the_wheels_stops_before_any_part(tmp_path):
    if list((ROOT / ".whl").glob("*.whl")):
        pytest.skip("wheels present in .whl/: 'all' would install them and start the GPU parts")
    res = _run("all", tmp_path / "out", timeout=60)
    assert res.returncode == 1 and "no wheels in .whl/" in res.stdout
    assert not (tmp_path / "out" / "summary.json").exists()
