"""The research harness (nothing in the runtime imports it; tests/test_algo_imports.py checks):

- tasks/ (the synthetic copy task, the countdown chain task), tiny_checkpoint (random-weight HF fixtures),
  assets (the files the CPU recipes name, and the one ``ensure`` that makes them);
- chain_base + build_base (a chain base trained and gated, STUDY_DESIGN §6.4);
- runner (resumable cells), analysis, collect, probe (Table-1 probes), claims (the scorecard), figures, report:
  the chain study (chain_study, §6.5-6.8); scaling + scaling_cli (``red-study --sizes``) and scaling_report;
- preset_study: the copy task's nine-preset study (``red-study``).

scripts/ holds thin wrappers of the command-line modules.
"""
