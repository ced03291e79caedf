"""Train: python scripts/train.py --recipe tiny_cpu [--run-dir DIR] [--check] [section.field=value ...]

A thin wrapper of ``red_megatron.cli.train`` (the ``red-train`` console script), kept as the
torchrun / NeMo-Run target; run ``--help`` for the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.cli.train import build_parser, main, parse_config  # noqa: E402,F401

if __name__ == "__main__":  # dist checkpointing's helpers start with spawn: keep the guard
    sys.exit(main())
