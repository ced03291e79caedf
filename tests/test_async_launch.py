"""Launching a disaggregated run (docs/ASYNC.md §5): the local torchrun and the 2-node Slurm dry runs carry
the overrides to scripts/train.py, and a disaggregated layout the trainer cannot run is refused before launch."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_launch import _main, slurm_2n

DISAGG = ["rollout.placement=disaggregated", "rollout.num_engines=2", "rollout.max_staleness=1"]


def test_local_dry_run(tmp_path):
    rc, out, err = _main(["--recipe", "tiny_cpu", "--executor", "local", "--nproc", "2", "--run-dir",
                          str(tmp_path / "r"), "--dry-run", *DISAGG])
    assert rc == 0, err
    line = next(x for x in out.splitlines() if "train.py" in x)
    assert "torchrun " in line and "--nproc-per-node 2" in line, out
    assert line.rstrip().endswith(" ".join(DISAGG)), line


def test_slurm_dry_run(tmp_path):
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"),
                          "--dry-run", *DISAGG, "rollout.tp_infer=1", "rollout.executor=uni"])
    assert rc == 0, err
    srun = [x for x in out.splitlines() if x.startswith("srun ")]
    assert len(srun) == 1 and srun[0].rstrip().endswith(" ".join([*DISAGG, "rollout.tp_infer=1",
                                                                   "rollout.executor=uni"])), out


def test_slurm_tensor_parallel_engines_take_tp_infer_spare_gpus_each(tmp_path):
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--trainer-ranks-per-node", "4", "--run-dir",
                          str(tmp_path / "r"), "--dry-run", *DISAGG])  # the 7B recipe's rollout.tp_infer=2
    assert rc == 0, err
    srun = [x for x in out.splitlines() if x.startswith("srun ")]
    assert srun[0].rstrip().endswith("rollout.engine_devices=4,5,6,7"), srun  # 2 engines × 2 GPUs
    rc, _, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--trainer-ranks-per-node", "6", "--run-dir",
                        str(tmp_path / "r"), "--dry-run", *DISAGG])
    assert rc == 2 and "rollout.num_engines=2 engines of rollout.tp_infer=2 GPUs" in err, err


ENGINES4 = ["rollout.placement=disaggregated", "rollout.num_engines=4", "rollout.tp_infer=1", "rollout.executor=uni"]


def test_slurm_trainer_ranks_per_node_give_engines_the_spare_gpus(tmp_path):
    """2 nodes x 8 GPUs, 4 trainer ranks a node (TP 2 x DP 4): torchrun starts 4 a node and the four engines of
    rank 0 get GPUs 4-7 of its node; the idle GPUs of the other node are named in a note."""
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--trainer-ranks-per-node", "4",
                          "--run-dir", str(tmp_path / "r"), "--dry-run", *ENGINES4])
    assert rc == 0, err
    srun = next(x for x in out.splitlines() if x.startswith("srun "))
    assert "--nnodes 2 --nproc-per-node 4 " in srun, srun
    assert srun.rstrip().endswith(" ".join([*ENGINES4, "rollout.engine_devices=4,5,6,7"])), srun
    assert "#SBATCH --gpus-per-node=8" in out
    assert "GPUs [4, 5, 6, 7] of the other 1 node(s) stay idle" in err, err


@pytest.mark.parametrize("extra, match", [
    ([], "rollout.placement='disaggregated'"),  # spare GPUs without engines to use them
    (ENGINES4[:1] + ["rollout.num_engines=5", *ENGINES4[2:]], "rollout.num_engines=5"),  # 5 engines, 4 spare GPUs
    (ENGINES4 + ["rollout.engine_devices=2,5,6,7"], "names GPU(s) ['2']"),  # a trainer rank's GPU
])
def test_slurm_spare_gpus_are_checked(tmp_path, extra, match):
    rc, _, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--trainer-ranks-per-node", "4",
                        "--run-dir", str(tmp_path / "r"), "--dry-run", *extra])
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_trainer_ranks_per_node_is_a_slurm_flag(tmp_path):
    rc, _, err = _main(["--recipe", "tiny_cpu", "--executor", "local", "--nproc", "2", "--trainer-ranks-per-node", "1",
                        "--run-dir", str(tmp_path / "r"), "--dry-run"])
    assert rc == 2 and "--trainer-ranks-per-node needs --executor slurm" in err, err


def test_slurm_external_engines_on_every_nodes_spare_gpus(tmp_path):
    """rollout.engine_launch=external: a background srun step starts 4 engines on each of the 2 nodes (GPUs 4..7),
    each joining the trainer through <run_dir>/engines; the trainer waits for all 8 on its host name."""
    run = tmp_path / "r"
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--trainer-ranks-per-node", "4", "--run-dir",
                          str(run), "--dry-run", "rollout.placement=disaggregated", "rollout.engine_launch=external",
                          "rollout.tp_infer=1", "rollout.executor=uni", "rollout.max_staleness=1"])
    assert rc == 0, err
    lines = out.splitlines()
    srun = [x for x in lines if x.startswith("srun ")]
    assert len(srun) == 2, out
    engines, trainer = srun
    assert lines.index(engines) < lines.index(trainer)  # started first, in the background
    assert engines.rstrip().endswith("&") and "--overlap" in engines and "--nodes=2" in engines
    assert "--ntasks-per-node=4" in engines and "d=$(( 4 + SLURM_LOCALID * 1 ))" in engines
    assert "CUDA_VISIBLE_DEVICES=$(seq -s, $d $(( d + 0 )))" in engines
    assert f"--join {run}/engines --index $(( SLURM_NODEID * 4 + SLURM_LOCALID ))" in engines
    assert "--container-image nvcr.io/nvidia/pytorch:25.09-py3" in engines
    assert "--nproc-per-node 4" in trainer and "rollout.num_engines=8 rollout.listen_host=auto" in trainer
    assert "secret" not in engines.replace(f"{run}/engines", "")  # the secret travels in an owner-only file only


def test_slurm_external_engines_need_spare_gpus(tmp_path):
    rc, _, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"), "--dry-run",
                        "rollout.placement=disaggregated", "rollout.engine_launch=external", "rollout.tp_infer=1",
                        "rollout.executor=uni"])
    assert rc == 2 and "rollout.engine_launch='external' on Slurm" in err and "--trainer-ranks-per-node" in err, err


def test_slurm_external_tensor_parallel_engines(tmp_path):
    """tp_infer=2: 2 engines a node, each a torchrun group of 2 on GPUs 4-5 and 6-7."""
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--trainer-ranks-per-node", "4", "--run-dir",
                          str(tmp_path / "r"), "--dry-run", "rollout.placement=disaggregated",
                          "rollout.engine_launch=external", "rollout.max_staleness=1"])  # the recipe's tp_infer=2
    assert rc == 0, err
    engines, trainer = [x for x in out.splitlines() if x.startswith("srun ")]
    assert "--ntasks-per-node=2" in engines and "d=$(( 4 + SLURM_LOCALID * 2 ))" in engines
    assert "torch.distributed.run --standalone --nproc-per-node 2 -m red_megatron.rollout.remote" in engines
    assert "rollout.num_engines=4 rollout.listen_host=auto" in trainer
