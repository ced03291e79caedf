"""The import rules of ARCHITECTURE.md, checked on every file of the tree.

kernels/ and red_megatron/algo/ know nothing of the rest (torch, triton and the standard
library only; kernels/ also the algorithm's contract and per-token loss); megatron is imported only under red_megatron/policy/, vllm only under
red_megatron/rollout/.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                pkg = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                found.append((node.lineno, ".".join(pkg + ((node.module,) if node.module else ()))))
            else:
                found.append((node.lineno, node.module))
    return found


def _py_files(*parts: str) -> list[Path]:
    return sorted(p for p in ROOT.joinpath(*parts).rglob("*.py"))


# kernels/ may use the algorithm's one statement of the per-token contract and loss (docs/KERNEL_CONTRACT.md:
# the kernel's reference is the logits side composed with algo's red_token_loss), nothing else of the project
@pytest.mark.parametrize("layer,allowed_own", [
    ("kernels", ("kernels", "red_megatron.algo.contract", "red_megatron.algo.loss")),
    ("red_megatron/algo", ("red_megatron.algo",))])
def test_pure_layers_import_only_torch_triton_stdlib(layer, allowed_own):
    bad = []
    for path in _py_files(layer):
        for line, mod in _imports(path):
            top = mod.split(".")[0]
            if top in STDLIB or top in ("torch", "triton", "numpy") or mod.startswith(allowed_own):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("lib,home", [("megatron", "red_megatron/policy"), ("vllm", "red_megatron/rollout")])
def test_heavy_libraries_have_one_import_site(lib, home):
    bad = []
    for path in _py_files("red_megatron") + _py_files("kernels") + _py_files("scripts") + _py_files("configs"):
        rel = path.relative_to(ROOT)
        if str(rel).startswith(home):
            continue
        bad += [f"{rel}:{line} imports {mod}" for line, mod in _imports(path) if mod.split(".")[0] == lib]
    assert not bad, f"{lib} may be imported only under {home}/:\n" + "\n".join(bad)


def test_importing_pure_layers_loads_no_heavy_library():
    code = ("import sys, kernels, red_megatron.algo\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('megatron', 'vllm', 'transformers'))\n"
            "own = sorted(m for m in sys.modules if m.startswith('red_megatron.') and not m.startswith('red_megatron.algo'))\n"
            "print(heavy + own)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
