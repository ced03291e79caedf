"""The project's entry points, installed as console scripts (pyproject.toml):

- ``red-train`` (``red_megatron.cli.train``): a run from a recipe + overrides; ``--check`` validates only;
- ``red-eval`` (``red_megatron.cli.eval``): the paper's evaluation protocol on an HF checkpoint;
- ``red-launch`` (``red_megatron.cli.launch``): NeMo-Run launches, locally or on Slurm;
- ``red-study`` (``red_megatron.cli.study``): the nine-preset study (needs a clone: it runs scripts/);
- ``red-export`` (``red_megatron.cli.export``): any checkpoint step of a run dir -> an HF directory.

Each has ``--help``, takes ``section.field=value`` overrides and refuses bad input with one line
``error: ...`` on stderr and exit code 2 (``red_megatron.errors.run_cli``; ``--debug`` or
RED_DEBUG=1 for the traceback). ``scripts/*.py`` are thin wrappers of these (torchrun targets).
"""
