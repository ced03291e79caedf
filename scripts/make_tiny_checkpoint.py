"""Write a tiny random-weight HF checkpoint (config, safetensors, locally trained BPE tokenizer).

Example: python scripts/make_tiny_checkpoint.py --out runs/tiny_qwen2 --arch qwen2 --hidden 128 --layers 2
         python scripts/make_tiny_checkpoint.py --out runs/chain_init --shape chain --corpus chain
(--shape names a set of defaults, SHAPES in red_megatron/study/tiny_checkpoint.py; single flags override it.)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.study.tiny_checkpoint import (  # noqa: E402
    ARCHS, CORPORA, SHAPES, TinyCheckpointConfig, make_tiny_checkpoint, shape_config,
)


def main(argv: list[str] | None = None) -> Path:
    d = TinyCheckpointConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="default",
                    help="a named set of shape defaults (chain: STUDY_DESIGN's 192/4 layers/6 heads/2 KV/512)")
    ap.add_argument("--corpus", default="synthetic",
                    help=f"the BPE's training text: one of {CORPORA} or a .txt/.parquet/.jsonl file")
    ap.add_argument("--arch", choices=ARCHS, default=None, help=f"default {d.arch}")
    for name in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab_size", "seed",
                 "max_position"):
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                        help=f"default {getattr(d, name)} (or the --shape's)")
    ap.add_argument("--tie-word-embeddings", action="store_true", default=None)
    ap.add_argument("--init-std", type=float, default=None, help=f"default {d.init_std}")
    args = vars(ap.parse_args(argv))
    out, shape, corpus = args.pop("out"), args.pop("shape"), args.pop("corpus")
    cfg = shape_config(shape, **{k: v for k, v in args.items() if v is not None})
    t0 = time.perf_counter()
    path = make_tiny_checkpoint(cfg, out, corpus=corpus)
    print(f"[make_tiny_checkpoint] {cfg.arch} hidden={cfg.hidden} layers={cfg.layers} heads={cfg.heads}/"
          f"{cfg.kv_heads} head_dim={cfg.head_dim} vocab={cfg.vocab_size} -> {path} "
          f"({time.perf_counter() - t0:.1f} s)")
    return path


if __name__ == "__main__":
    main()
