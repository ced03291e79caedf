"""red-megatron: RED (Recall-Extend Dynamics) post-training on Megatron-Core.

Layers (see ARCHITECTURE in the README): ``algo`` (the RED math, pure torch) and the
top-level ``kernels`` package know nothing of the rest; ``policy`` is the only Megatron
import site, ``rollout`` the only vLLM one; ``trainer`` composes one step.
"""

__version__ = "0.1.0"
