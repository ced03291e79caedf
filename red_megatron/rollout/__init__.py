"""vLLM rollouts: the only vLLM import site (imported lazily, inside the functions that need it).

- ``config.RolloutConfig``: engine settings (tp_infer, dtype, executor, sleep mode, ...).
- ``engine.RolloutEngine``: generate from token ids (samples, sampled log-probs, finish reasons),
  score sequences, in-place weight updates, sleep/wake_up.
- ``refit.RefitPlan`` / ``refit.refit``: bucketed streaming of the trainer's HF-named weights.
- ``verify.verify_refit``: engine-vs-trainer log-prob gap on fixed sequences.
"""
