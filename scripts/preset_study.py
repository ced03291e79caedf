"""The nine-preset study on the synthetic task: python scripts/preset_study.py [--presets grpo,red] [--out DIR]

A thin wrapper of ``red_megatron.study.preset_study``; run ``--help`` for the options.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.study.preset_study import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
