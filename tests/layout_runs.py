"""Several ``red-train`` runs in one launch (``torchrun ... tests/layout_runs.py SPEC.json``): the layout tier's
time goes mostly into each process importing torch, megatron, vLLM and transformers (~25 s of CPU a process
on 2 cores), not into its 3 tiny steps, so the runs of one layout share their processes.

SPEC.json: a list of runs, each ``{"argv": [red-train arguments], "resume_from": {"src": dir, "dst": dir,
"step": n}}`` (``resume_from`` optional): rank 0 copies the finished run ``src`` to ``dst`` with every
checkpoint after step ``n`` removed, so ``dst`` resumes from step ``n``. Each run goes through the CLI's own
``main`` (train() runs twice in a process for the staged presets too); the launch stops at the first run
that fails, with its exit code.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def _resume_copy(src: str, dst: str, step: int) -> None:
    shutil.copytree(src, dst)
    ckpts = Path(dst) / "checkpoints"
    later = [p for p in ckpts.glob("step_*") if int(p.name.split("_")[1]) > step]
    for p in later:
        shutil.rmtree(p)
    (ckpts / "latest").write_text(f"step_{step:08d}")


def main(spec_path: str) -> int:
    import os

    import torch.distributed as dist

    from red_megatron.cli.train import main as red_train

    runs = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    for i, run in enumerate(runs):
        if "resume_from" in run:
            r = run["resume_from"]
            if rank == 0:
                _resume_copy(r["src"], r["dst"], int(r["step"]))
            if dist.is_initialized():  # the first run set the default group up; it outlives train()
                dist.barrier()
        print(f"[layout_runs] run {i + 1}/{len(runs)}: red-train {' '.join(run['argv'])}", flush=True)
        rc = red_train(run["argv"])
        if rc:
            return rc
    return 0


if __name__ == "__main__":  # megatron's checkpoint writer starts with spawn: keep the guard
    sys.exit(main(sys.argv[1]))
