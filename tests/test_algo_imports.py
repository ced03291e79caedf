"""Layering (ARCHITECTURE.md): algo/ imports only torch, kernels/ only torch/triton/torch.distributed
and the algorithm's torch-only contract and loss (red_megatron.algo: the one definition of the token
kinds and of the per-token formula, docs/KERNEL_CONTRACT.md), nothing else of red_megatron.

Checks: what importing red_megatron.algo (and kernels) actually loads (a fresh subprocess), and an
AST scan of every import statement in red_megatron/algo/ and kernels/ (catches lazy imports too).
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)
FORBIDDEN = ("megatron", "vllm", "transformers", "nemo_run", "math_verify")

_PROBE = r"""
import json, sys
import torch
before = set(sys.modules)
import red_megatron.algo
after = set(sys.modules)
print(json.dumps(sorted(after - before)))
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_algo_loads_only_torch_stdlib_and_algo():
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    new, everything = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert "red_megatron.algo.loss" in new  # the probe did import the package
    for mod in new:
        top = mod.split(".")[0]
        ok = top in STDLIB or top.startswith("_") or mod == "red_megatron" or mod.startswith("red_megatron.algo")
        assert ok, f"importing red_megatron.algo loaded {mod!r}"
    for mod in everything:
        assert mod.split(".")[0] not in FORBIDDEN, f"{mod} is loaded by importing red_megatron.algo"
        assert not mod.startswith("red_megatron.") or mod.startswith("red_megatron.algo"), mod


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package by construction
                continue
            out.append((node.lineno, node.module or ""))
    return out


_KERNELS_PROBE = r"""
import json, sys
import torch
import kernels
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "red_megatron" or m.split(".")[0] in %r)))
""" % (FORBIDDEN,)


def test_importing_kernels_loads_only_algo_of_red_megatron():
    pytest.importorskip("triton", reason="triton is not installed")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", _KERNELS_PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "red_megatron.algo.contract" in loaded  # the kinds come from the algorithm
    bad = [m for m in loaded if not (m == "red_megatron" or m.startswith("red_megatron.algo"))]
    assert not bad, f"importing kernels loaded {bad}"


@pytest.mark.parametrize(
    "folder, allowed",
    [
        ("red_megatron/algo", ("torch", "red_megatron.algo")),
        ("kernels", ("torch", "triton", "kernels", "red_megatron.algo.contract", "red_megatron.algo.loss")),
    ],
)
def test_ast_scan_of_imports(folder, allowed):
    files = sorted((ROOT / folder).rglob("*.py"))
    if folder == "kernels" and not files:
        pytest.skip("kernels/ has no Python files yet")
    assert files, f"no Python files under {folder}"
    bad = []
    for f in files:
        for line, mod in _imports(f):
            top = mod.split(".")[0]
            if top in STDLIB or top == "__future__":
                continue
            if any(mod == a or mod.startswith(a + ".") for a in allowed):
                continue
            bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


RUNTIME = ("", "algo", "hf", "data", "reward", "policy", "rollout", "eval", "launch")  # "": trainer.py & co.; study/, cli/ on top


@pytest.mark.parametrize("folder", RUNTIME)
def test_runtime_never_imports_the_study_harness(folder):
    """The study's tasks, bases and fixtures live in red_megatron/study; the runtime (and the recipes'
    configs package) stays out of the runtime's import graph, lazy imports included."""
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}"
           for f in sorted((ROOT / "red_megatron" / folder).glob("*.py" if not folder else "**/*.py")) for line, mod in _imports(f)
           if mod == "red_megatron.study" or mod.startswith(("red_megatron.study.", "configs"))]
    assert not bad, bad


def test_data_holds_the_pipeline_only():
    names = {p.stem for p in (ROOT / "red_megatron" / "data").glob("*.py")}
    assert names <= {"__init__", "chat", "dataset", "loader", "prepare", "records", "trace_check"}, names
