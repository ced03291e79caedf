"""Write a Hugging Face model directory from a stream of (hf_name, tensor): shards, index, config, tokenizer.

Kept apart from ``convert.py`` (which produces the stream) so the file format lives in one place.
Only one shard of at most ``max_shard_bytes`` is held in host memory at a time: each shard is
written to a temporary file as soon as it fills and renamed to HF's ``model-0000i-of-0000n``
scheme at the end (a single shard is ``model.safetensors``, with no index).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from red_megatron.errors import UserError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".tmp")


def write_hf_directory(named_tensors: Iterable[tuple[str, torch.Tensor]], raw_config: dict, out_dir, *,
                       src_dir=None, write: bool = True, max_shard_bytes: int = 4 << 30) -> Path:
    """Consume ``named_tensors`` (always, so a collective stream stays in step); write if ``write``.

    config.json is ``raw_config`` with its dtype set to the tensors' dtype; every non-weight
    file of ``src_dir`` (tokenizer, generation config, chat template, ...) is copied. A tensor with a
    NaN or inf is refused (UserError naming it) once the stream is consumed, and nothing is left.
    """
    out = Path(out_dir)
    writer = _ShardWriter(out, max_shard_bytes) if write else None
    saved_dtype = None
    nonfinite: list[str] = []
    for name, t in named_tensors:
        if writer is not None:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                nonfinite.append(name)  # keep consuming: the other ranks are still streaming
            if not nonfinite:
                saved_dtype = t.dtype
                writer.add(name, t)
    if writer is None:
        return out
    if nonfinite:
        writer.discard()
        more = f" (and {len(nonfinite) - 1} more tensors)" if len(nonfinite) > 1 else ""
        raise UserError(f"non-finite weights in tensor {nonfinite[0]}{more} of the export to {out}: expected "
                        f"finite values (nothing was written; the weights diverged, export an earlier checkpoint)")
    writer.close()
    cfg = dict(raw_config)
    if saved_dtype is not None:
        name = str(saved_dtype).replace("torch.", "")
        cfg["torch_dtype"] = name
        if "dtype" in cfg:  # transformers 5 spelling
            cfg["dtype"] = name
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if src_dir is not None and Path(src_dir).resolve() != out.resolve():
        for f in Path(src_dir).iterdir():
            if f.is_file() and f.name != "config.json" and not f.name.endswith(_WEIGHT_SUFFIXES):
                shutil.copy2(f, out / f.name)
    return out


class _ShardWriter:
    """Writes safetensors shards of at most ``max_bytes`` as they fill (only one shard in memory)."""

    def __init__(self, out: Path, max_bytes: int):
        from safetensors.torch import save_file

        self.out, self.max_bytes, self._save = out, int(max_bytes), save_file
        out.mkdir(parents=True, exist_ok=True)
        self.cur: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[Path, list[str], int]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.cur and self.size + nbytes > self.max_bytes:
            self._write()
        self.cur[name] = t.detach().to("cpu").contiguous().clone()
        self.size += nbytes

    def _write(self) -> None:
        tmp = self.out / f".shard-{len(self.files):05d}.safetensors.tmp"
        self._save(self.cur, str(tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.cur), self.size))
        self.cur, self.size = {}, 0

    def discard(self) -> None:
        """Remove the shards written so far (a refused export leaves no half model behind)."""
        for tmp, _, _ in self.files:
            tmp.unlink(missing_ok=True)
        self.cur, self.files = {}, []

    def close(self) -> None:
        if self.cur or not self.files:
            self._write()
        n = len(self.files)
        if n == 1:
            self.files[0][0].replace(self.out / "model.safetensors")
            return
        weight_map, total = {}, 0
        for i, (tmp, names, size) in enumerate(self.files):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            tmp.replace(self.out / fname)
            weight_map.update({k: fname for k in names})
            total += size
        (self.out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
