"""scripts/launch.py on NeMo-Run: validation before launch, dry runs (local command, 2-node sbatch),
real local torchrun launches (a stand-in train script that records its torchrun environment), sweeps,
and failure detection (NeMo-Run itself exits 0 when a job fails)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from red_megatron.launch import LaunchSpec, parse_sweeps
from tests.hf_shapes import qwen25_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def _main(argv):
    import launch  # scripts/launch.py

    out, err = io.StringIO(), io.StringIO()
    stdin, sys.stdin = sys.stdin, io.StringIO("")  # NeMo-Run's LocalTunnel (invoke) polls stdin
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = launch.main(argv)
    finally:
        sys.stdin = stdin
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------- spec / sweeps
def test_parse_sweeps_product_and_labels():
    pts = parse_sweeps(["algo.preset=grpo,red", "seed=0,1,2"])
    assert len(pts) == 6
    assert pts[0] == ("preset_grpo-seed_0", ["algo.preset=grpo", "seed=0"])
    assert pts[-1][1] == ["algo.preset=red", "seed=2"]
    assert len({label for label, _ in pts}) == 6
    assert parse_sweeps([]) == [("train", [])]
    for bad in (["seed"], ["seed="], ["seed=1,1"], ["seed=1", "seed=2"]):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweeps(bad)


def test_launch_spec_validation():
    assert LaunchSpec(executor="slurm", nodes=2, gpus_per_node=8, account="a", container_image="i").world_size == 16
    assert LaunchSpec(executor="local", nproc=3).world_size == 3
    with pytest.raises(ValueError, match="--account"):
        LaunchSpec(executor="slurm", nodes=2)
    with pytest.raises(ValueError, match="--nodes"):
        LaunchSpec(executor="local", nodes=2)
    with pytest.raises(ValueError, match="--container-image"):
        LaunchSpec(executor="slurm", account="a")
    with pytest.raises(ValueError, match="--time"):
        LaunchSpec(executor="slurm", account="a", container_image="i", time="4h")
    with pytest.raises(ValueError, match="--container-mounts"):
        LaunchSpec(executor="slurm", account="a", container_image="i", container_mounts=("/lustre",))
    with pytest.raises(ValueError, match="--detach"):
        LaunchSpec(executor="local", detach=True)


# ---------------------------------------------------------------------------------------- refusals
SLURM_2N = ["--executor", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--account", "acct-rl",
            "--partition", "batch", "--time", "02:30:00", "--container-image", "nvcr.io/nvidia/pytorch:25.09-py3",
            "--code-dir", "/code/red-megatron"]
MOUNTS = "/lustre/models:/models,/lustre/data:/data,/lustre/code:/code"


def slurm_2n(tmp_path):
    """A 2-node × 8-GPU Slurm launch whose mounts hold the recipe's paths and this test's tmp dir."""
    return [*SLURM_2N, "--container-mounts", f"{MOUNTS},{tmp_path}:{tmp_path}"]


@pytest.mark.parametrize("overrides, match", [
    (["policy.tp=3"], "policy.tp=3"),  # 3 does not divide 16 GPUs
    (["policy.tp=8", "policy.pp=4"], "policy.pp=4"),  # 32 > 16
    (["data.global_batch_size=12"], "data.global_batch_size=12"),  # not divisible by DP 8
    (["rollout.tp_infer=16", "rollout.executor=external_launcher"], "rollout.tp_infer=16"),  # spans two nodes
])
def test_invalid_layout_is_refused_before_launch(tmp_path, overrides, match):
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"), "--dry-run",
                          *overrides])
    assert rc == 2, (out, err)
    assert "launch refused" in err and match in err
    assert not (tmp_path / "r").exists()  # nothing was started, not even NeMo-Run's home


def test_unknown_field_and_recipe_are_refused(tmp_path):
    rc, _, err = _main(["--recipe", "tiny_cpu", "--run-dir", str(tmp_path), "--dry-run", "policy.nope=1"])
    assert rc == 2 and "nope" in err
    rc, _, err = _main(["--recipe", "no_such_recipe", "--run-dir", str(tmp_path), "--dry-run"])
    assert rc == 2 and "tiny_cpu" in err  # the message lists the valid names


def test_head_count_checked_when_checkpoint_is_readable(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(qwen25_config("Qwen2.5-7B")))
    # tp=8 tiles 16 GPUs but does not divide Qwen2.5-7B's 28 heads; without the file it is only a note
    rc, _, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"), "--dry-run",
                        f"model_dir={ckpt}", "policy.tp=8"])
    assert rc == 2 and "policy.tp=8" in err and "num_attention_heads=28" in err
    # vLLM may replicate the 4 KV heads (tp_infer=8 is fine for them) but must split the 28 q heads
    (ckpt / "config.json").write_text(json.dumps(qwen25_config("Qwen2.5-7B")))
    rc, _, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"), "--dry-run",
                        f"model_dir={ckpt}", "policy.tp=4", "rollout.tp_infer=8", "rollout.executor=external_launcher"])
    assert rc == 2 and "rollout.tp_infer=8" in err and "num_attention_heads=28" in err


# ---------------------------------------------------------------------------------------- dry runs
def test_slurm_dry_run_two_nodes(tmp_path):
    """The 2-node sbatch script against what NeMo-Run's SlurmExecutor says it asks for: every resource once,
    torchrun sized by the executor, the head node from Slurm's node list, one --container-workdir."""
    from red_megatron.launch import nemo

    run_dir = tmp_path / "run7b"
    extra = ["--exclusive", "--cpus-per-task", "96", "--mem", "0", "--gres", "gpu:8"]
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), *extra, "--run-dir", str(run_dir),
                          "--dry-run", "--env", "WANDB_MODE=offline", "steps=5", "algo.preset=grpo"])
    assert rc == 0, err
    lines = out.splitlines()
    spec = LaunchSpec(executor="slurm", nodes=2, gpus_per_node=8, account="acct-rl", partition="batch",
                      time="02:30:00", container_image="i", exclusive=True, cpus_per_task=96, mem="0", gres="gpu:8")
    ex = nemo.build_executor(spec, tmp_path / "home")
    assert (ex.nnodes(), ex.nproc_per_node()) == (2, 8)
    assert (ex.exclusive, ex.cpus_per_task, ex.mem, ex.gres) == (True, 96, "0", "gpu:8")
    for want in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --account=acct-rl",
                 "#SBATCH --partition=batch", "#SBATCH --time=02:30:00", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --exclusive", "#SBATCH --cpus-per-task=96", "#SBATCH --mem=0", "#SBATCH --gres=gpu:8"):
        assert lines.count(want) == 1, f"{want!r} not exactly once in\n{out}"
    flags = [line.split("=")[0] for line in lines if line.startswith("#SBATCH ")]
    assert len(flags) == len(set(flags)), flags  # each sbatch flag once
    srun = [line for line in lines if line.startswith("srun ")]
    assert len(srun) == 1, out
    cmd = srun[0]
    launch_part = cmd[:cmd.index("torchrun")]
    opts = [tok.split("=")[0] for tok in launch_part.split() if tok.startswith("--")]
    assert len(opts) == len(set(opts)), opts  # each srun flag once (NeMo-Run wrote --container-workdir twice)
    assert "--container-workdir=/code/red-megatron" in launch_part and "/nemo_run/code" not in launch_part
    assert "--container-image nvcr.io/nvidia/pytorch:25.09-py3" in cmd
    assert f"{MOUNTS},{tmp_path}:{tmp_path}" in cmd  # the mounts, before NeMo-Run's own job mount
    # the head node: Slurm's own node list, not an srun step asking `hostname --ip-address`
    assert 'head_node_ip=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in lines
    assert "hostname --ip-address" not in out
    assert "#SBATCH --job-name=qwen25_7b.train" in lines
    torchrun = cmd[cmd.index("torchrun"):]
    assert f"--nnodes {ex.nnodes()}" in torchrun and f"--nproc-per-node {ex.nproc_per_node()}" in torchrun
    assert "--rdzv-endpoint $head_node_ip:29500" in torchrun and "--node-rank $SLURM_NODEID" in torchrun
    assert torchrun.endswith(f"/code/red-megatron/scripts/train.py --recipe qwen25_7b --run-dir {run_dir} "
                             "steps=5 algo.preset=grpo"), torchrun
    assert "export PYTHONPATH=/code/red-megatron" in lines and "export WANDB_MODE=offline" in lines


@pytest.mark.parametrize("where, field", [
    (["--run-dir", "/lustre/runs/red7b"], "--run-dir=/lustre/runs/red7b"),  # docs/LAUNCH.md's old example
    (["--run-dir", "{tmp}/r", "model_dir=/ckpt/Qwen2.5-7B"], "model_dir=/ckpt/Qwen2.5-7B"),
    (["--run-dir", "{tmp}/r", "data.path=/scratch/train.parquet"], "data.path=/scratch/train.parquet"),
    (["--run-dir", "{tmp}/r", "--code-dir", "/home/me/red-megatron"], "--code-dir=/home/me/red-megatron"),
    (["--run-dir", "runs/r"], "--run-dir='runs/r' is relative"),
])
def test_paths_outside_the_container_mounts_are_refused(tmp_path, where, field):
    args = [a.replace("{tmp}", str(tmp_path)) for a in where]
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--dry-run", *args])
    assert rc == 2, (out, err)
    line = [x for x in err.splitlines() if "launch refused" in x]
    assert len(line) == 1 and field in line[0] and MOUNTS in line[0], err  # one line: the path and the mounts


def test_slurm_resources_are_validated():
    base = dict(executor="slurm", account="a", container_image="i")
    for kw, match in (({"mem": "lots"}, "--mem"), ({"gres": "gpu 8"}, "--gres"), ({"cpus_per_task": 0}, "--cpus-per-task")):
        with pytest.raises(ValueError, match=match):
            LaunchSpec(**base, **kw)
    with pytest.raises(ValueError, match="--exclusive is a Slurm resource"):
        LaunchSpec(executor="local", exclusive=True)
    assert LaunchSpec(**base, mem="512G", gres="gpu:h100:8").gres == "gpu:h100:8"


def test_launch_docs_slurm_example_passes_the_checks():
    """docs/LAUNCH.md's Slurm command validates (its run dir is inside a mount); nothing is created."""
    import re
    import shlex

    from red_megatron.cli.launch import build_parser, plan

    text = (REPO / "docs" / "LAUNCH.md").read_text()
    block = re.search(r"```bash\n(red-launch --recipe qwen25_7b --executor slurm.*?)```", text, re.S)
    assert block, "docs/LAUNCH.md has no Slurm example starting with red-launch --recipe qwen25_7b --executor slurm"
    argv = shlex.split(block.group(1).replace("\\\n", " "))[1:]
    spec, tasks, _, run_dir = plan(build_parser().parse_args(argv))
    assert spec.host_path(str(run_dir)) is not None and spec.nodes == 2


def test_slurm_dry_run_sweep_gives_one_sbatch_per_value(tmp_path):
    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path), "--dry-run",
                          "--sweep", "algo.preset=grpo,red"])
    assert rc == 0, err
    assert out.count("#!/bin/bash") == 2
    assert f"--run-dir {tmp_path}/preset_grpo algo.preset=grpo" in out
    assert f"--run-dir {tmp_path}/preset_red algo.preset=red" in out


def test_local_dry_run_prints_torchrun_command(tmp_path):
    rc, out, err = _main(["--recipe", "tiny_cpu", "--nproc", "2", "--run-dir", str(tmp_path / "t"), "--dry-run",
                          "steps=1"])
    assert rc == 0, err
    cmd = [line for line in out.splitlines() if "torchrun" in line]
    assert len(cmd) == 1, out
    # torchrun with the stop protocol (a stop: one line and exit 3), not NeMo-Run's plain torchrun launcher
    assert " python -m red_megatron.launch.torchrun --standalone --nproc-per-node 2 " in cmd[0], cmd[0]
    assert cmd[0].endswith(f"{REPO}/scripts/train.py --recipe tiny_cpu --run-dir {tmp_path / 't'} steps=1")
    assert f"NEMORUN_HOME={(tmp_path / 't' / 'nemo_run').resolve()}" in cmd[0]


# ---------------------------------------------------------------------------------------- real launches
STAND_IN = textwrap.dedent("""
    # test double of scripts/train.py: records the torchrun environment it was started with
    import json, os, sys
    out = os.environ["STANDIN_OUT"]
    rank = os.environ["RANK"]
    rec = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "NEMORUN_HOME")}
    rec["argv"] = sys.argv[1:]
    tag = sys.argv[sys.argv.index("--run-dir") + 1].replace("/", "_")
    with open(os.path.join(out, f"{tag}-rank{rank}.json"), "w") as f:
        json.dump(rec, f)
    if os.environ.get("STANDIN_EXIT") == "2":  # a refusal, as run_cli prints it
        print("error: " + os.environ.get("STANDIN_REFUSE", "bad stand-in input"), file=sys.stderr)
    sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
""")


def _launch_subprocess(args, env_extra, timeout=240):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, str(REPO / "scripts" / "launch.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_local_torchrun_two_processes_and_sweep(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    rec_dir = tmp_path / "records"
    rec_dir.mkdir()
    run_dir = tmp_path / "run"
    p = _launch_subprocess(["--recipe", "tiny_cpu", "--nproc", "2", "--run-dir", str(run_dir),
                            "--script", str(script), "--sweep", "seed=3,4",
                            "--env", f"STANDIN_OUT={rec_dir}", "steps=1"], {})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(f.read_text()) for f in sorted(rec_dir.glob("*.json"))]
    assert len(recs) == 4  # 2 sweep tasks × 2 torchrun ranks
    for seed in (3, 4):
        mine = [r for r in recs if f"seed={seed}" in r["argv"]]
        assert sorted(r["RANK"] for r in mine) == ["0", "1"]
        assert {r["WORLD_SIZE"] for r in mine} == {"2"} and sorted(r["LOCAL_RANK"] for r in mine) == ["0", "1"]
        assert mine[0]["argv"] == ["--recipe", "tiny_cpu", "--run-dir", str(run_dir / f"seed_{seed}"), "steps=1",
                                   f"seed={seed}"]
    home = (run_dir / "nemo_run").resolve()
    assert {r["NEMORUN_HOME"] for r in recs} == {str(home)}
    assert (home / "experiments").is_dir()  # NeMo-Run's records live in the run directory


@pytest.mark.parametrize("code", [1, 2])
def test_failed_job_makes_the_launcher_fail(tmp_path, code):
    """A crash is FAILED (exit 1); a refusal (exit 2: NeMo-Run says FAILED too) is the task's one line on stderr
    and exit 2, read from the exit code red_megatron.launch.torchrun records for the launcher."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    p = _launch_subprocess(["--recipe", "tiny_cpu", "--nproc", "2", "--run-dir", str(tmp_path / "run"),
                            "--script", str(script), "--env", f"STANDIN_OUT={tmp_path}",
                            "--env", f"STANDIN_EXIT={code}",
                            "--env", "STANDIN_REFUSE=bad value in data.path: expected a file"], {})
    assert p.returncode == code, p.stdout[-2000:] + p.stderr[-2000:]
    if code == 1:
        assert "FAILED" in p.stderr
    else:
        assert p.stderr == "error: bad value in data.path: expected a file\n", p.stderr[-2000:]
        assert "Traceback" not in p.stdout, p.stdout[-2000:]


def test_refusal_line_is_rank_0s_last_error_line(tmp_path):
    """Which failed task refused: its last 'error: ...' line, with or without torchrun's rank prefix; a crash
    (no such line) gives none."""
    from red_megatron.launch.nemo import refusal_line

    def log(task: str, text: str) -> None:
        f = tmp_path / "t_1" / task / "nemo_run" / f"{task}-x" / task / "0" / "stderr.log"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)

    log("seed_3", "W1206 torch warning\n[default0]:error: bad value in data.path: expected a file\nTraceback\n")
    log("seed_4", "Traceback (most recent call last):\nRuntimeError: a bug\n")
    log("seed_5", "error: an early line\nerror: the last line\n")
    assert refusal_line(str(tmp_path), "seed_3") == "bad value in data.path: expected a file"
    assert refusal_line(str(tmp_path), "seed_4") is None
    assert refusal_line(str(tmp_path), "seed_5") == "the last line"


def _trainer_ready() -> str | None:
    if not (REPO / "scripts" / "train.py").exists():
        return "scripts/train.py does not exist yet"
    try:
        import red_megatron.trainer  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the lead's progress
        return f"red_megatron.trainer does not import: {e!r}"
    return None


@pytest.mark.slow
def test_tiny_recipe_real_launch_two_processes(tmp_path):
    why = _trainer_ready()
    if why:
        pytest.skip(why)
    run_dir = tmp_path / "tiny"
    p = _launch_subprocess(["--recipe", "tiny_cpu", "--nproc", "2", "--run-dir", str(run_dir), "steps=1"], {},
                           timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [m["step"] for m in metrics if "step" in m][-1] == 1


def test_verbose_is_passed_to_the_training_tasks(tmp_path):
    rc, out, err = _main(["--recipe", "tiny_cpu", "--nproc", "1", "--run-dir", str(tmp_path / "t"), "--dry-run",
                          "--verbose", "steps=1"])
    assert rc == 0, err
    (cmd,) = [line for line in out.splitlines() if "torchrun" in line]
    assert cmd.endswith(f"scripts/train.py --recipe tiny_cpu --run-dir {tmp_path / 't'} --verbose steps=1"), cmd


def test_help_text_slurm_example_passes_the_checks():
    import re
    import shlex

    from red_megatron.cli import launch as cli_launch

    m = re.search(r"(red-launch --recipe qwen25_7b --executor slurm.*?math_eval\.parquet)", cli_launch.__doc__, re.S)
    assert m, "red-launch --help has no Slurm example"
    argv = shlex.split(m.group(1).replace("\\\n", " "))[1:]
    spec, tasks, _, run_dir = cli_launch.plan(cli_launch.build_parser().parse_args(argv))
    assert spec.host_path(str(run_dir)) == "/lustre/runs/red7b" and spec.exclusive and spec.mem == "0"


def test_slurm_pre_timeout_signal(tmp_path):
    """--signal-before N: sbatch --signal=USR1@N, and torchrun started with SIGUSR1 ignored, so the signal (which
    Slurm sends to every process of the step) stops the ranks after their step and checkpoint, not torchrun."""
    from red_megatron.launch.nemo import USR1_IGNORED_TORCHRUN

    rc, out, err = _main(["--recipe", "qwen25_7b", *slurm_2n(tmp_path), "--run-dir", str(tmp_path / "r"), "--dry-run",
                          "--signal-before", "300"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines.count("#SBATCH --signal=USR1@300") == 1, out
    (srun,) = [ln for ln in lines if ln.startswith("srun ")]
    assert f" {USR1_IGNORED_TORCHRUN} --rdzv-backend c10d " in srun and srun.count("torchrun") == 2, srun
    rc, _, err = _main(["--recipe", "tiny_cpu", "--nproc", "1", "--dry-run", "--signal-before", "300"])
    assert rc == 2 and "--signal-before needs --executor slurm" in err
    # the wrapper's effect: the launched process ignores SIGUSR1; a rank's own handler still receives it
    code = ("import os, signal\nfrom red_megatron.run_control import StopSignals\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\nprint('survived', flush=True)\n"
            "with StopSignals() as s:\n    os.kill(os.getpid(), signal.SIGUSR1)\nprint(s.received)\n")
    wrapper = USR1_IGNORED_TORCHRUN.replace("exec torchrun", "exec").rsplit(" ", 1)[0]
    p = subprocess.run(["bash", "-c", wrapper.split("'")[1], "x", sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0 and p.stdout.split() == ["survived", "SIGUSR1"], p.stderr


def test_a_stopped_launch_leaves_later_tasks_unstarted_and_reports_one_line(tmp_path, monkeypatch, capsys):
    """A sequential sweep stopped in its first task: the next task's torchrun sees the launcher's stop file and
    exits 3 at once, recording that it did not start; the launcher's one line names both (exit 3)."""
    import types

    from red_megatron.cli.launch import _local_outcome
    from red_megatron.launch import nemo, torchrun

    status = tmp_path / "exit_status"
    status.mkdir()
    (status / "STOP").touch()
    (status / "seed_0.json").write_text(json.dumps({"exit_code": 3, "signal": "SIGTERM", "skipped": False}))
    monkeypatch.setenv("RED_LAUNCH_STOP", str(status / "STOP"))
    monkeypatch.setenv("RED_EXIT_STATUS", str(status / "seed_1.json"))
    assert torchrun.main(["--nproc-per-node", "1", "no_such_script.py"]) == 3
    assert nemo.exit_status(tmp_path, "seed_1") == {"exit_code": 3, "signal": None, "skipped": True}
    tasks = [types.SimpleNamespace(name=f"seed_{i}", run_dir=str(tmp_path / f"seed_{i}")) for i in (0, 1)]
    states = {"seed_0": "FAILED", "seed_1": "FAILED"}
    assert _local_outcome(states, "SIGTERM", {}, tasks, tmp_path) == 3
    assert capsys.readouterr().err == (f"red-launch: stopped by SIGTERM (seed_0: checkpoint in {tmp_path}/seed_0/"
                                       f"checkpoints; seed_1: not started); run the same command again to resume\n")
    (status / "seed_1.json").write_text(json.dumps({"exit_code": 1, "signal": "SIGTERM", "skipped": False}))
    assert _local_outcome(states, "SIGTERM", {}, tasks, tmp_path) is None  # a crash: the FAILED report
