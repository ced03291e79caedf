"""The study's verifiable tasks: the synthetic copy task (the demo's) and the countdown chain task (the study's)."""
