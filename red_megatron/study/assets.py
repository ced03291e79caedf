"""The files the CPU recipes read, named here and built here only.

A recipe (configs/) returns a RunConfig whose paths point under $RED_ASSETS (default <repo>/runs/assets) and
builds nothing; ``ensure(*recipes)`` makes what those recipes read, once, each directory atomically (a temp
directory renamed into place), so concurrent processes agree. Callers: ``make demo`` (scripts/demo.py), the
study commands, and the test session (tests/conftest.py).

  python -m red_megatron.study.assets                     # every CPU recipe's files
  python -m red_megatron.study.assets tiny_cpu            # only the demo's: tiny Qwen2 + synthetic copy splits

Chain assets are named by a hash of the inputs that make them (``chain_data_<key>``, ``chain_init_<key>``), so
a changed knob gets a new directory, never a stale one. The chain base (hours of CPU) is not built here:
``python scripts/build_chain_base.py`` trains and gates it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ASSET_VERSION = 1  # bump when the generator or the tokenizer corpus changes what a key means
TINY_DIFFICULTY = "copy"
TINY_SPLITS = {"train": (0, 256), "eval": (1, 64)}  # split -> (seed, examples)


def assets_root() -> Path:
    return Path(os.environ.get("RED_ASSETS", REPO / "runs" / "assets")).resolve()


def key(obj: dict) -> str:
    blob = json.dumps({"v": ASSET_VERSION, **obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def atomic_dir(final: Path, make) -> Path:
    """Run ``make(tmp_dir)`` and rename the result to ``final`` unless another process got there first."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        make(tmp)
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- paths (pure: what the recipes name) ----

def tiny_paths(root: Path | None = None) -> dict[str, Path]:
    """{'model_dir', 'train', 'eval'}: the demo's tiny checkpoint and its two synthetic splits."""
    root = Path(root or assets_root())
    return {"model_dir": root / "tiny_qwen2", "train": root / f"synthetic_{TINY_DIFFICULTY}_train.parquet",
            "eval": root / f"synthetic_{TINY_DIFFICULTY}_heldout.parquet"}


def chain_data_paths(task=None, root: Path | None = None) -> dict[str, Path]:
    """{split: parquet} of the chain task ``task`` (default: the CPU knobs)."""
    from red_megatron.study.tasks.chain import SPLITS, ChainTaskConfig

    task = task or ChainTaskConfig()
    d = Path(root or assets_root()) / f"chain_data_{key(dataclasses.asdict(task))}"
    return {s: d / f"chain_{s}.parquet" for s in SPLITS}


def chain_init_dir(base_seed: int = 0, root: Path | None = None, shape: str = "chain") -> Path:
    """The random-init checkpoint of ``shape`` (a chain-vocabulary shape of tiny_checkpoint.SHAPES)."""
    from red_megatron.study.tiny_checkpoint import shape_config

    ckpt = shape_config(shape, seed=base_seed)
    return Path(root or assets_root()) / f"chain_init_{key({'ckpt': ckpt.key_fields(), 'corpus': 'chain'})}"


# ---- building ----

def ensure_tiny(root: Path | None = None) -> dict[str, Path]:
    paths = tiny_paths(root)
    paths["model_dir"].parent.mkdir(parents=True, exist_ok=True)
    if not (paths["model_dir"] / "config.json").exists():
        from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

        shutil.rmtree(paths["model_dir"], ignore_errors=True)  # a half-made one (no config.json) from an older build
        atomic_dir(paths["model_dir"], lambda tmp: make_tiny_checkpoint(TinyCheckpointConfig(seed=0), tmp))
    for split, (seed, n) in TINY_SPLITS.items():
        if not paths[split].exists():
            from red_megatron.study.tasks.synthetic import SyntheticTaskConfig, write_parquet

            fd, tmp = tempfile.mkstemp(prefix=f".{split}-", suffix=".parquet", dir=paths[split].parent)
            os.close(fd)
            write_parquet(SyntheticTaskConfig(difficulty=TINY_DIFFICULTY, num_examples=n, seed=seed, trace_detail=1,
                                              data_source=f"synthetic_{TINY_DIFFICULTY}"), tmp)
            os.replace(tmp, paths[split])
    return paths


def ensure_chain_data(task=None, root: Path | None = None) -> dict[str, Path]:
    from red_megatron.study.tasks.chain import ChainTaskConfig, write_splits

    task = task or ChainTaskConfig()
    paths = chain_data_paths(task, root)

    def make(tmp: Path) -> None:
        write_splits(task, tmp)
        (tmp / "chain_config.json").write_text(json.dumps(dataclasses.asdict(task), indent=1, default=str) + "\n")

    atomic_dir(next(iter(paths.values())).parent, make)
    return paths


def ensure_chain_init(base_seed: int = 0, root: Path | None = None, shape: str = "chain") -> Path:
    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    ckpt = shape_config(shape, seed=base_seed)
    return atomic_dir(chain_init_dir(base_seed, root, shape), lambda tmp: make_tiny_checkpoint(ckpt, tmp, corpus="chain"))


def _chain_base_inputs(root):
    from configs.chain_cpu import base_task

    ensure_chain_data(base_task(), root)
    ensure_chain_init(0, root)


# recipe -> what makes its files; recipes not named here (the GPU ones) read checkpoints and data given to them
ENSURE = {
    "tiny_cpu": lambda root: ensure_tiny(root),
    "tiny_cpu_study": lambda root: ensure_tiny(root),
    "chain_cpu_base": _chain_base_inputs,
    "chain_cpu_study": lambda root: ensure_chain_data(None, root),
}


def ensure(*recipes: str, root: Path | None = None) -> None:
    """Make (once) every file the named recipes read (default: all of ENSURE). The chain study also needs its
    gated base, which only scripts/build_chain_base.py trains."""
    bad = [r for r in recipes if r not in ENSURE]
    if bad:
        raise ValueError(f"no assets to make for recipe(s) {bad}; recipes with assets: {', '.join(ENSURE)}")
    for name in recipes or tuple(ENSURE):
        ENSURE[name](root)


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if any(n.startswith("-") for n in names):
        print(__doc__)
        return 0 if names in (["-h"], ["--help"]) else 2
    try:
        ensure(*names)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[assets] ready under {assets_root()}: {', '.join(names or ENSURE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
