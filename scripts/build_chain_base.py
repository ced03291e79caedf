"""Build and gate a chain base (STUDY_DESIGN §6.4): python scripts/build_chain_base.py [--shape chain_s] [--steps N]

A thin wrapper of ``red_megatron.study.build_base``; run ``--help`` for the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.study.build_base import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
