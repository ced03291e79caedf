"""red-study: the nine-preset study (the paper's Table 2 rows) on the synthetic task.

The study drives scripts/train.py and scripts/eval.py of a clone (one process per run) and writes
its report under benchmarks/reports/, so it runs from a clone of the repository (an editable
install); its options are those of red_megatron/study/preset_study.py (``red-study --help``), with
``section.field=value`` overrides applied to every run. With ``--sizes`` it is the scaling study over
model sizes with the fair-lr protocol (red_megatron/study/scaling_cli.py: ``red-study --sizes s --help``).
"""
from __future__ import annotations

import sys

from red_megatron.cli.common import REPO_ROOT
from red_megatron.errors import UserError, run_cli

def load_study():
    """red_megatron.study.preset_study; it drives scripts/train.py and scripts/eval.py of the clone this package
    is installed from, so a wheel without the scripts is refused here, not after minutes of setup."""
    if not (REPO_ROOT / "scripts" / "train.py").is_file():
        raise UserError(f"missing scripts/train.py under {REPO_ROOT}: expected a clone of red-megatron "
                        f"(pip install -e .); the study runs the clone's scripts/")
    from red_megatron.study import preset_study

    return preset_study


def _main(argv: list[str]) -> int:
    if any(a == "--sizes" or a.startswith("--sizes=") for a in argv):  # the scaling study (study/scaling_cli.py)
        from red_megatron.study.scaling_cli import main as scaling_main

        return scaling_main(argv)
    return load_study().main(argv)


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":  # the study's ThreadPool and subprocesses need no guard, kept for symmetry
    sys.exit(main())
