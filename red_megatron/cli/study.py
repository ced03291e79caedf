"""red-study: the nine-preset study (the paper's Table 2 rows) on the synthetic task.

The study drives scripts/train.py and scripts/eval.py of a clone (one process per run) and writes
its report under benchmarks/reports/, so it runs from a clone of the repository (an editable
install); its options are those of scripts/preset_study.py (``red-study --help``), with
``section.field=value`` overrides applied to every run. With ``--sizes`` it is the scaling study over
model sizes with the fair-lr protocol (red_megatron/study/scaling_cli.py: ``red-study --sizes s --help``).
"""
from __future__ import annotations

import importlib.util
import sys

from red_megatron.cli.common import REPO_ROOT
from red_megatron.errors import UserError, run_cli

STUDY_SCRIPT = REPO_ROOT / "scripts" / "preset_study.py"


def load_study():
    """scripts/preset_study.py of the clone this package is installed from, as a module."""
    if not STUDY_SCRIPT.is_file():
        raise UserError(f"missing study script in {STUDY_SCRIPT}: expected a clone of red-megatron "
                        f"(pip install -e .); the study runs the clone's scripts/")
    if "preset_study" in sys.modules:
        return sys.modules["preset_study"]
    spec = importlib.util.spec_from_file_location("preset_study", STUDY_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["preset_study"] = mod
    spec.loader.exec_module(mod)
    return mod


def _main(argv: list[str]) -> int:
    if any(a == "--sizes" or a.startswith("--sizes=") for a in argv):  # the scaling study (study/scaling_cli.py)
        from red_megatron.study.scaling_cli import main as scaling_main

        return scaling_main(argv)
    return load_study().main(argv)


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # the study's ThreadPool and subprocesses need no guard, kept for symmetry
    sys.exit(main())
