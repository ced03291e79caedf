"""The Megatron-Core policy: the project's only megatron import site.

``MegatronPolicy`` and ``PolicyConfig`` are exported lazily, so importing the package (e.g. for
the config dataclass) does not import megatron.
"""
from red_megatron.policy.config import PolicyConfig

__all__ = ["MegatronPolicy", "PolicyConfig"]


def __getattr__(name):
    if name == "MegatronPolicy":
        from red_megatron.policy.policy import MegatronPolicy

        return MegatronPolicy
    raise AttributeError(f"module 'red_megatron.policy' has no attribute {name!r}")
