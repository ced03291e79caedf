"""The safetensors side of a Hugging Face directory: which file holds which tensor, and the
tensors' names, shapes and dtypes from the headers alone (no weights read)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def weight_map(model_dir) -> dict[str, str]:
    """tensor name -> file name (relative to ``model_dir``), from the index or the single file."""
    d = Path(model_dir)
    index = d / INDEX
    if index.is_file():
        try:
            wm = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"unreadable weights index in {index}: expected JSON with a 'weight_map' ({e})") from None
        return dict(wm)
    if (d / SINGLE).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(d / SINGLE), framework="pt") as f:
                return {k: SINGLE for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - SafetensorError ("incomplete metadata"): name the file
            raise ValueError(f"unreadable weights file in {d / SINGLE}: expected a complete safetensors file "
                             f"({e})") from None
    raise FileNotFoundError(f"missing weights in {d}: expected {SINGLE} or {INDEX}")


def weight_files(model_dir) -> list[str]:
    return sorted(set(weight_map(model_dir).values()))


def tensor_specs(model_dir) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in the directory, from the safetensors headers."""
    from safetensors import safe_open

    d = Path(model_dir)
    out = {}
    for f in weight_files(d):
        with safe_open(str(d / f), framework="pt") as fh:
            for name in fh.keys():
                sl = fh.get_slice(name)
                out[name] = (tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype(), sl.get_dtype()))
    return out
