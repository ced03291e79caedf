"""Write the built-in verifiable math task as parquet in the OpenR1/LUFFY schema.

Example: python scripts/make_synthetic_task.py --out runs/data/copy_train.parquet --difficulty copy -n 512
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.study.tasks.synthetic import DIFFICULTIES, KINDS, SyntheticTaskConfig, write_parquet  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    d = SyntheticTaskConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output .parquet path")
    ap.add_argument("--difficulty", choices=DIFFICULTIES, default=d.difficulty)
    ap.add_argument("-n", "--num-examples", dest="num_examples", type=int, default=d.num_examples)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(d.kinds),
                    help="problem kinds for medium/hard")
    ap.add_argument("--trace-detail", dest="trace_detail", type=int, choices=(0, 1, 2), default=d.trace_detail,
                    help="teacher trace length: 0 short, 1 normal, 2 with restatements and checks")
    ap.add_argument("--data-source", dest="data_source", default=d.data_source)
    ap.add_argument("--copy-max-digit", dest="copy_max_digit", type=int, default=d.copy_max_digit,
                    help="copy task: answers are digits 0..N")
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    cfg = SyntheticTaskConfig(**{**args, "kinds": tuple(args["kinds"])})
    t0 = time.perf_counter()
    path = write_parquet(cfg, out)
    print(f"[make_synthetic_task] {cfg.num_examples} {cfg.difficulty} problems (seed {cfg.seed}) -> {path} "
          f"({time.perf_counter() - t0:.1f} s)")
    return path


if __name__ == "__main__":
    main()
