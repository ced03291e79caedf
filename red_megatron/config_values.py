"""The rules every number of a run config obeys, whatever section it sits in (run by check_world,
so ``--check`` and the run refuse alike): a float is finite (``policy.lr=inf`` trained to exit 0 and
exported NaN weights; ``algo.temperature=inf``), a seed is an int >= 0. Section-specific ranges stay
in each section's ``__post_init__``."""
from __future__ import annotations

import dataclasses
import math

from red_megatron.errors import UserError


def _walk(obj, prefix: str = ""):
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from _walk(v, path + ".")
        else:
            yield path, f.name, v


def check_values(cfg) -> None:
    """One UserError naming the first field of ``cfg`` (a dataclass tree) that breaks a rule above."""
    for path, name, v in _walk(cfg):
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"non-finite value in {path}={v!r}: expected a finite number")
        if (name == "seed" or name.endswith("_seed")) and isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise UserError(f"negative seed in {path}={v}: expected an int >= 0")
