"""Several ``red-train`` runs in one launch (``torchrun ... tests/layout_runs.py SPEC.json``): the layout tier's
time goes mostly into each process importing torch, megatron, vLLM and transformers (~25 s of CPU a process
on 2 cores), not into its 3 tiny steps, so the runs of one layout share their processes.

SPEC.json: a list of runs, each ``{"argv": [red-train arguments], "resume_from": {"src": dir, "dst": dir,
"step": n}}`` (``resume_from`` optional): rank 0 copies the finished run ``src`` to ``dst`` with every
checkpoint after step ``n`` removed, so ``dst`` resumes from step ``n``. Each run goes through the CLI's own
``main`` (train() runs twice in a process for the staged presets too); the launch stops at the first run
that fails, with its exit code.

Used by the MoE layout tier only. Tried on the dense tier (2026-12-06): with vLLM's external_launcher the
run after an engine's shutdown built its model at the wrong TP, and at DP=2 the third run (a resume after two
runs) failed on a process group of an earlier run ("Group ... is not registered"): each vLLM shutdown
destroys the default group, and some state keeps the old one. Extend it only with a test that runs the layout.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path


def _resume_copy(src: str, dst: str, step: int) -> None:
    """Rank 0: ``src`` copied to ``dst`` as of its step-``step`` checkpoint, appearing at once (a rename)."""
    tmp = Path(dst + ".partial")
    shutil.copytree(src, tmp)
    ckpts = tmp / "checkpoints"
    for p in [p for p in ckpts.glob("step_*") if int(p.name.split("_")[1]) > step]:
        shutil.rmtree(p)
    (ckpts / "latest").write_text(f"step_{step:08d}")
    os.rename(tmp, dst)


def _wait_for(path: str, timeout_s: float = 600.0) -> None:
    """The other ranks wait on the file system, not on a collective: an engine's shutdown may have taken the
    default process group down with it (vLLM's external_launcher), and train() sets it up again."""
    deadline = time.monotonic() + timeout_s
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"layout_runs: rank 0 did not make {path} within {timeout_s:.0f} s")
        time.sleep(0.2)


def _fresh_default_group(i: int) -> None:
    """The default process group run ``i`` trains on. vLLM's engine shutdown (EngineCore.shutdown ->
    cleanup_dist_env_and_memory) destroys the default group at the end of every run; set up again from the
    environment it would reuse the launcher's store keys of the first set-up (a dense DP=2 launch failed
    so: a rank without a group inside megatron's DDP), so each run gets a store prefix of its own."""
    import torch.distributed as dist

    if dist.is_initialized() or "MASTER_ADDR" not in os.environ:
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    dist.init_process_group("gloo", store=dist.PrefixStore(f"layout_runs/{i}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def main(spec_path: str) -> int:
    from red_megatron.cli.train import main as red_train

    runs = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    for i, run in enumerate(runs):
        if "resume_from" in run:
            r = run["resume_from"]
            if rank == 0:
                _resume_copy(r["src"], r["dst"], int(r["step"]))
            _wait_for(r["dst"])
        _fresh_default_group(i)
        print(f"[layout_runs] run {i + 1}/{len(runs)}: red-train {' '.join(run['argv'])}", flush=True)
        rc = red_train(run["argv"])
        if rc:
            return rc
    return 0


if __name__ == "__main__":  # megatron's checkpoint writer starts with spawn: keep the guard
    sys.exit(main(sys.argv[1]))
