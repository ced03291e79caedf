"""Layering (ARCHITECTURE.md): algo/ imports only torch, kernels/ only torch/triton/torch.distributed.

Two checks: what importing red_megatron.algo actually loads (a fresh subprocess), and an AST
scan of every import statement in red_megatron/algo/ and kernels/ (catches lazy imports too).
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


@pytest.mark.parametrize(
    "folder, allowed",
    [
        ("red_megatron/algo", ("torch", "red_megatron.algo")),
        ("kernels", ("torch", "triton", "kernels")),
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
