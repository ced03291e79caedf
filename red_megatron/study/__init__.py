"""The chain study (STUDY_DESIGN §6.5-6.8): runner (resumable cells), analysis, Table-1 probes, scorecard,
figures, report.

scripts/chain_study.py is the command line; scripts/preset_study.py stays the copy task's nine-preset study."""
