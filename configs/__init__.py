"""Recipes: one function a run, each returning the whole RunConfig (ARCHITECTURE rule 2).

The command line (scripts/train.py, scripts/launch.py) only overrides single fields
(``policy.tp=4``); NeMo-Run only wraps the recipe. Names:
- ``tiny_cpu``: the CPU demo (tiny random Qwen2 + the synthetic copy task; their files: red_megatron.study.assets);
- ``tiny_cpu_study``: the same at lr 1e-3, the preset study's default;
- ``chain_cpu_base`` / ``chain_cpu_study``: the chain task's SFT base warm-up and its study (configs/chain_cpu.py);
- ``qwen25_math_1p5b``: Qwen2.5-Math-1.5B with the paper's hyper-parameters, one 8×H100 node;
- ``qwen25_7b``: Qwen2.5-7B, TP=2, vLLM TP=2, one or more 8×H100 nodes;
- ``qwen25_32b``: Qwen2.5-32B, TP=8 × PP=2, vLLM TP=4, two or more 8×H100 nodes;
- ``qwen25_7b_16k`` / ``qwen25_32b_16k``: the same at 16k-token responses with context parallelism 2;
- ``qwen3_30b_a3b``: Qwen3-30B-A3B (mixture of experts), EP=8 × PP=2, vLLM TP=4, two or four 8×H100 nodes.

Recipes return configurations and build no files: ``python -m red_megatron.study.assets [RECIPE]`` makes the CPU
recipes' files (``make demo``, the study commands and the test session call it).

A recipe of one's own needs no edit here: ``--recipe path/to/my_recipes.py:name`` calls the function
``name`` of that file (default ``recipe``), which returns a RunConfig like the ones above.
"""
from __future__ import annotations

from typing import Callable

from configs.chain_cpu import chain_cpu_base, chain_cpu_study
from configs.qwen25 import qwen25_7b, qwen25_7b_16k, qwen25_32b, qwen25_32b_16k, qwen25_math_1p5b
from configs.qwen3_moe import qwen3_30b_a3b
from configs.tiny_cpu import tiny_cpu, tiny_cpu_study

RECIPES: dict[str, Callable] = {
    "tiny_cpu": tiny_cpu,
    "tiny_cpu_study": tiny_cpu_study,
    "chain_cpu_base": chain_cpu_base,
    "chain_cpu_study": chain_cpu_study,
    "qwen25_math_1p5b": qwen25_math_1p5b,
    "qwen25_7b": qwen25_7b,
    "qwen25_32b": qwen25_32b,
    "qwen25_7b_16k": qwen25_7b_16k,
    "qwen25_32b_16k": qwen25_32b_16k,
    "qwen3_30b_a3b": qwen3_30b_a3b,
}


def get_recipe(name: str):
    """The RunConfig of recipe ``name`` (or of ``FILE.py[:function]``); an unknown name is a ValueError
    listing the valid ones."""
    file, _, fn_name = name.partition(":") if ".py" in name else (name, "", "")
    if file.endswith(".py"):
        return _file_recipe(file, fn_name or "recipe")
    try:
        fn = RECIPES[name]
    except KeyError:
        hint = (f" (a config file such as {name} goes in --config)"
                if name.endswith((".json", ".yaml", ".yml")) else "")
        raise ValueError(f"unknown recipe {name!r}{hint}; valid recipes: {', '.join(RECIPES)}, or "
                         f"FILE.py[:function]") from None
    return fn()


def _file_recipe(path: str, fn_name: str):
    """A user's recipe: function ``fn_name`` of the Python file ``path`` (anywhere on disk)."""
    import importlib.util
    from pathlib import Path

    from red_megatron.config import RunConfig

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no recipe file at --recipe {path}: expected an existing .py file")
    spec = importlib.util.spec_from_file_location(f"red_user_recipe_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = sorted(k for k, v in vars(module).items()
                       if callable(v) and getattr(v, "__module__", "") == module.__name__)
        raise ValueError(f"no function {fn_name!r} in recipe file {path}: expected one of {names} "
                         f"(--recipe {path}:NAME)")
    cfg = fn()
    if not isinstance(cfg, RunConfig):
        raise ValueError(f"recipe {path}:{fn_name} returned {type(cfg).__name__}: expected a RunConfig")
    return cfg


__all__ = ["RECIPES", "get_recipe"]
