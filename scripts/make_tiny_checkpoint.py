"""Write a tiny random-weight HF checkpoint (config, safetensors, locally trained BPE tokenizer).

Example: python scripts/make_tiny_checkpoint.py --out runs/tiny_qwen2 --arch qwen2 --hidden 128 --layers 2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.data.tiny_checkpoint import ARCHS, TinyCheckpointConfig, make_tiny_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    d = TinyCheckpointConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--arch", choices=ARCHS, default=d.arch)
    for name in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab_size", "seed",
                 "max_position"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(d, name))
    ap.add_argument("--tie-word-embeddings", action="store_true", default=d.tie_word_embeddings)
    ap.add_argument("--init-std", type=float, default=d.init_std)
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    cfg = TinyCheckpointConfig(**args)
    t0 = time.perf_counter()
    path = make_tiny_checkpoint(cfg, out)
    print(f"[make_tiny_checkpoint] {cfg.arch} hidden={cfg.hidden} layers={cfg.layers} heads={cfg.heads}/"
          f"{cfg.kv_heads} head_dim={cfg.head_dim} vocab={cfg.vocab_size} -> {path} "
          f"({time.perf_counter() - t0:.1f} s)")
    return path


if __name__ == "__main__":
    main()
