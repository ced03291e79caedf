"""Evaluate an HF checkpoint with the paper's protocol: python scripts/eval.py --model DIR [--name RED] [...]

A thin wrapper of ``red_megatron.cli.eval`` (the ``red-eval`` console script); ``--help`` lists
the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.cli.eval import build_parser, main  # noqa: E402,F401

if __name__ == "__main__":  # the reward pool's workers start with forkserver/spawn
    sys.exit(main())
