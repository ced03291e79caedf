"""Train: python scripts/train.py --recipe tiny_cpu [--run-dir DIR] [section.field=value ...]

A torchrun target (reads RANK / WORLD_SIZE / LOCAL_RANK when launched by torchrun or
NeMo-Run); alone it runs as a one-process world. The recipe (configs/) gives the whole config;
the command line overrides single fields; the config is validated before anything is built.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_config(argv=None):
    from configs import RECIPES, get_recipe
    from red_megatron.overrides import apply_overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny_cpu", help=f"one of {sorted(RECIPES)}")
    ap.add_argument("--run-dir", default=None, help="where metrics, checkpoints and plots go (overrides run_dir)")
    ap.add_argument("overrides", nargs="*", help="section.field=value, e.g. policy.tp=2 algo.preset=grpo steps=20")
    args = ap.parse_args(argv)
    cfg = get_recipe(args.recipe)
    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    return apply_overrides(cfg, overrides)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = parse_config(argv)
    from red_megatron.config import check_world

    check_world(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # before megatron or vLLM start
    from red_megatron.trainer import train

    t0 = time.time()
    final = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        keep = {k: v for k, v in final.items() if isinstance(v, (int, float))}
        print(json.dumps({"run_dir": cfg.run_dir, "seconds": round(time.time() - t0, 1), **keep}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
