"""The code against megatron-core 0.19.2 too (the GPU machine's and Python 3.12 clusters' version).

This machine's Python 3.11 installs 0.16.1; 0.19.2 ships only as a cp312 wheel, whose Python code
imports on 3.11 (its one C extension serves the dataset helpers, which the project does not use).
scripts/setup_env.sh unpacks it into .venv/mcore-0.19.2 (RED_MCORE_ALT names another copy); these
tests put it first on PYTHONPATH and run, in a subprocess, the policy tests that touch megatron-core's
APIs (build, passes, optimizer, distributed checkpoint save/resume, export); the GPU script's smoke
runs on it in tests/test_gpu_pending.py.
0.16.1 -> 0.19.2 differences found so far: 0.19 writes no dist/common.pt (its common state lives in
the shards), which the resume check required (fixed: meta.json lists what the save wrote).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.19.2"
ALT = Path(os.environ.get("RED_MCORE_ALT") or ROOT / ".venv" / f"mcore-{VERSION}")
# the megatron-touching tests that run in about two minutes here; the layout tier and the trainer's
# end-to-end tests ran on 0.19.2 by hand (2026-12-02: 142 passed, incl. the golden traces bit-identical)
POLICY_TESTS = ["tests/test_megatron_cpu.py", "tests/test_policy_checkpoint.py", "tests/test_policy_train.py",
                "tests/test_policy_passes.py", "tests/test_policy_fp32_head.py", "tests/test_parallel_groups.py",
                "tests/test_cli_export.py", "tests/test_policy_moe.py", "tests/test_routing_replay.py",
                # the fused LM head (policy.fused_lm_head) takes megatron's TP/SP region ops by hand
                "tests/test_policy_fused_head.py::test_fused_head_step_equals_unfused"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ALT / "megatron" / "core").is_dir(),
                       reason=f"megatron-core {VERSION} not unpacked at {ALT} (scripts/setup_env.sh fetches it; "
                              "the pip index was unreachable or RED_MCORE_ALT is wrong)"),
]


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ALT), str(ROOT)]), **extra}


def test_the_alternate_megatron_core_is_the_one_imported():
    code = "import megatron.core as m; print(m.__version__); print(m.__file__)"
    p = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    version, path = p.stdout.split()[:2]
    # 0.19 appends the git revision of the working directory ("0.19.2+94c9f61"): the release is before the +
    assert version.split("+")[0] == VERSION and Path(path).resolve().is_relative_to(ALT.resolve()), p.stdout


def test_policy_tests_pass_on_the_alternate_version(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=900",
                        *POLICY_TESTS], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, f"on megatron-core {VERSION}:\n{p.stdout[-6000:]}\n{p.stderr[-2000:]}"
    assert " passed" in p.stdout and " failed" not in p.stdout
