"""The chain study (STUDY_DESIGN §6.5-6.8): python scripts/chain_study.py --steps 150 --seeds 0,1,2 --tag deciding

A thin wrapper of ``red_megatron.study.chain_study``; run ``--help`` for the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.study.chain_study import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
