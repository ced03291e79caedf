"""Convert a public math dataset into the project's schema (the openr1 layout DataConfig reads).

  # a local copy (parquet or jsonl) of a benchmark or training set
  python scripts/prepare_data.py --source /data/raw/aime24.jsonl --out /data/aime24.parquet
  # a Hugging Face datasets name, where the hub is reachable and `datasets` is installed
  python scripts/prepare_data.py --source Elliott/Openr1-Math-46k-8192 --split train --out /data/train.parquet

Question / answer / solution fields are found by name (problem|question, answer|final_answer,
solution) or given with --problem-key / --answer-key / --solution-key; a solution becomes the offline
trace (``target``). Rows already in the openr1 layout are kept. Bad rows: one error naming the row.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from red_megatron.cli.common import parser  # noqa: E402
from red_megatron.data.prepare import LAYOUTS, PrepareConfig, prepare  # noqa: E402
from red_megatron.errors import run_cli  # noqa: E402


def _main(argv: list[str]) -> int:
    ap = parser("prepare_data.py", __doc__)  # a bad flag is a refusal: one line, exit 2
    ap.add_argument("--source", required=True, help="a .parquet/.jsonl file, or a datasets name (org/name)")
    ap.add_argument("--out", required=True, help="the output .parquet or .jsonl")
    ap.add_argument("--layout", choices=LAYOUTS, default="auto")
    ap.add_argument("--split", default="train", help="hub datasets: the split")
    ap.add_argument("--problem-key")
    ap.add_argument("--answer-key")
    ap.add_argument("--solution-key")
    ap.add_argument("--data-source", help="the data_source of every row (default: the row's, else the file's name)")
    ap.add_argument("--system-prompt", default=None,
                    help="the system turn of built prompts (default: LUFFY's reasoning prompt; '' for none)")
    ap.add_argument("--prompt-template", default="{problem}", help="the user turn; must contain {problem}")
    ap.add_argument("--limit", type=int)
    args = ap.parse_args(argv)
    kw = {k: v for k, v in vars(args).items() if v is not None and k != "debug"}
    stats = prepare(PrepareConfig(**kw))
    print(json.dumps({"out": args.out, **stats}))
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
