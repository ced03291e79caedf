"""Launch a recipe through NeMo-Run: python scripts/launch.py --recipe NAME [--executor local|slurm] [...]

A thin wrapper of ``red_megatron.cli.launch`` (the ``red-launch`` console script); ``--help``
lists the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.cli.launch import build_parser, main, plan  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
