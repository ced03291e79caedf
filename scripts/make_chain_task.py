"""Write the countdown chain task's splits (chain_{pretrain,train,val,test}.parquet, OpenR1 schema).

  python scripts/make_chain_task.py --out runs/data/chain                 # the CPU defaults (STUDY_DESIGN §6.2)
  python scripts/make_chain_task.py --out runs/data/chain_clean --p-check 0 --p-replay 0   # clean teacher
  python scripts/make_chain_task.py --out runs/data/chain_gpu --gpu       # the §6.9 scale-up flag set

Knob flags override the CPU defaults (or, with --gpu, the GPU set). The problems of every split depend
only on the problem fields (width, rule, k, sizes, seeds), so trace-knob variants hold the same problems.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.study.tasks.chain import PREAMBLE_AT, RULES, SPLITS, ChainTaskConfig, gpu_config, write_splits  # noqa: E402

_INT = ("width", "k_max", "max_trace_tokens", "pretrain_rows", "pretrain_seed", "train_rows", "train_seed",
        "val_per_k", "val_seed", "test_per_band", "test_seed")
_FLOAT = ("p_check", "p_replay", "p_preamble", "p_detour", "p_wrong")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--gpu", action="store_true", help="start from the GPU scale-up flag set (§6.9)")
    ap.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    ap.add_argument("--rule", choices=tuple(RULES), default=None)
    ap.add_argument("--preamble-at", dest="preamble_at", choices=PREAMBLE_AT, default=None)
    ap.add_argument("--ood", action="store_true", default=None, help="add the chain_ood band to the test split")
    ap.add_argument("--pretrain-k-probs", dest="pretrain_k_probs", default=None,
                    help='JSON {k: probability}, e.g. \'{"1": 0.3, "2": 0.7}\'')
    for name in _INT:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None)
    for name in _FLOAT:
        ap.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=None)
    args = vars(ap.parse_args(argv))
    out, gpu, splits = args.pop("out"), args.pop("gpu"), args.pop("splits")
    if args["pretrain_k_probs"] is not None:
        try:
            args["pretrain_k_probs"] = {int(k): float(v) for k, v in json.loads(args["pretrain_k_probs"]).items()}
        except (ValueError, AttributeError) as e:
            ap.error(f"--pretrain-k-probs must be a JSON object of k -> probability ({e})")
    given = {k: v for k, v in args.items() if v is not None}
    cfg = gpu_config(**given) if gpu else ChainTaskConfig(**given)
    t0 = time.perf_counter()
    paths = write_splits(cfg, out, splits=tuple(splits))
    (Path(out) / "chain_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1, default=str) + "\n")
    print(f"[make_chain_task] {', '.join(f'{s}: {p}' for s, p in paths.items())} ({time.perf_counter() - t0:.1f} s)")
    return paths


if __name__ == "__main__":
    main()
