"""NeMo-Run glue: build the executor and one run.Script task per run, dry-run or launch them as
one run.Experiment, and turn the experiment's final state into an exit code.

Why the extra care around NeMo-Run 0.11.1 (see ../shared/CPU_STACK.md):
- ``run.run`` / ``Experiment.run`` return None and the process exits 0 even when a job
  FAILED, so the caller reads each job's final ``AppState`` after the experiment's context
  has waited for it (``job_states``) and exits non-zero on anything but SUCCEEDED.
- NeMo-Run keeps its experiment files under NEMORUN_HOME (default ~/.nemo_run); we point it
  into the run directory so a run's launch records live with its metrics and checkpoints.
- Locally, a task is ``python -m red_megatron.launch.torchrun`` (no NeMo-Run launcher): torchrun with the
  project's stop protocol (exit 3 after a stop signal, quiet). torchx starts it in a session of its own, so
  a terminal's Ctrl-C reaches only the launcher, which would leave the job running: ``launch`` forwards
  SIGINT/SIGTERM to it and waits, and, as NeMo-Run reports FAILED for any non-zero exit, reads each task's
  exit code from the file it writes (``RED_EXIT_STATUS``, ``exit_status``).
nemo_run is imported inside the functions: it costs ~5 s, and validation runs before it.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from red_megatron.launch.spec import LaunchSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
# NeMo-Run 0.11.1's slurm.sh.j2 asks the head node for its address with an extra srun step; Slurm's own
# node list already names it (torchrun's c10d rendezvous resolves the host name)
_NEMO_HEAD_IP = re.compile(r'^(?P<var>\w+)=\$\(srun --nodes=1 --ntasks=1 -w "\$head_node" hostname --ip-address\)$',
                           re.MULTILINE)
HEAD_NODE_LINE = '{var}=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)'
_NEMO_WORKDIR = re.compile(r" --container-workdir /nemo_run/code(?= .*--container-workdir=)")
# With sbatch --signal=USR1@N Slurm signals every process of the step, torchrun too, which SIGUSR1 would kill
# (its default action) and the step's end would then kill the ranks mid-save: torchrun starts with SIGUSR1
# ignored (an ignored signal stays ignored across exec), its ranks install their own handler (run_control.py).
USR1_IGNORED_TORCHRUN = """bash -c 'trap "" USR1; exec torchrun "$@"' torchrun"""


def finalize_sbatch(script: str) -> str:
    """NeMo-Run's sbatch script with each flag once and the head node from Slurm's node list.

    - ``--container-workdir``: NeMo-Run always writes ``/nemo_run/code`` (where a packager unpacks);
      with ``--code-dir`` ours comes later in the srun line, and NeMo-Run's is dropped;
    - ``head_node_ip``: ``scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1`` instead of an srun
      step running ``hostname --ip-address`` (which may print several addresses, or a loopback one).
    """
    script = _NEMO_HEAD_IP.sub(lambda m: HEAD_NODE_LINE.format(var=m.group("var")), script)
    usr1 = re.search(r"^#SBATCH --signal=USR1@", script, re.MULTILINE) is not None

    def srun(line: str) -> str:
        line = _NEMO_WORKDIR.sub("", line)
        return line.replace(" torchrun ", f" {USR1_IGNORED_TORCHRUN} ", 1) if usr1 else line

    return "\n".join(srun(line) if line.startswith("srun ") else line for line in script.split("\n"))


def _install_sbatch_fixes() -> None:
    """Route every SlurmBatchRequest.materialize (dry run and sbatch alike) through finalize_sbatch."""
    from nemo_run.core.execution.slurm import SlurmBatchRequest

    if getattr(SlurmBatchRequest.materialize, "_red_megatron", False):
        return
    original = SlurmBatchRequest.materialize

    def materialize(self) -> str:
        return finalize_sbatch(original(self))

    materialize._red_megatron = True
    SlurmBatchRequest.materialize = materialize


@dataclass(kw_only=True)
class Task:
    """One training run of the experiment: a job name and the train.py arguments."""

    name: str
    args: list[str]
    engines_per_node: int = 0  # rollout.engine_launch=external on Slurm: engines started on every node
    engine_tp: int = 1  # their rollout.tp_infer (GPUs an engine)
    run_dir: str | None = None


def engine_setup_lines(spec: LaunchSpec, task: Task) -> str | None:
    """The sbatch lines that start a task's external rollout engines: one background srun step with
    ``engines_per_node`` tasks on every node, engine (node, j) on spare GPU j, each joining the trainer through
    ``<run_dir>/engines`` (contact and owner-only secret; docs/ASYNC.md §5). They exit when the trainer closes
    their connection."""
    if not task.engines_per_node:
        return None
    e, first, tp = task.engines_per_node, spec.procs_per_node, task.engine_tp
    container = []
    if spec.container_image:
        container = [f"--container-image {spec.container_image}"]
        if spec.container_mounts:
            container.append(f"--container-mounts {','.join(spec.container_mounts)}")
        if spec.code_dir:
            container.append(f"--container-workdir={spec.code_dir}")
    launcher = "python" if tp == 1 else f"python -m torch.distributed.run --standalone --nproc-per-node {tp}"
    inner = (f"d=$(( {first} + SLURM_LOCALID * {tp} )); export CUDA_VISIBLE_DEVICES=$(seq -s, $d $(( d + {tp - 1} ))); "
             f"exec {launcher} -m red_megatron.rollout.remote --join {task.run_dir}/engines "
             f"--index $(( SLURM_NODEID * {e} + SLURM_LOCALID ))")
    return "\n".join([
        f"# rollout engines: {e} a node of {tp} GPU(s) each, on GPUs {first}..{first + e * tp - 1} "
        f"(rollout.engine_launch=external), joining the trainer through {task.run_dir}/engines",
        f"mkdir -p {shlex.quote(task.run_dir + '/engines')}",
        " ".join(["srun --overlap", f"--nodes={spec.nodes}", f"--ntasks-per-node={e}", "--kill-on-bad-exit=0",
                  *container, f"--output={task.run_dir}/engines/engine_%t.log", "bash -c", shlex.quote(inner), "&"]),
    ])


def set_nemorun_home(path: str | Path) -> Path:
    home = Path(path).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["NEMORUN_HOME"] = str(home)  # for anything NeMo-Run starts
    import nemo_run.config as nr_config

    nr_config.set_nemorun_home(str(home))
    return home


def build_executor(spec: LaunchSpec, nemorun_home: Path, title: str = "red-megatron"):
    import nemo_run as run

    env = dict(spec.env)  # NeMo-Run's sbatch template exports PYTHONUNBUFFERED itself
    if spec.executor == "local":
        env = {"PYTHONUNBUFFERED": "1", **env}
        # the child's import path: the repository (scripts/train.py also inserts it itself)
        env.setdefault("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        env.setdefault("NEMORUN_HOME", str(nemorun_home))
        bindir = str(Path(sys.executable).parent)  # the task's entrypoint "python" is found on PATH: the venv's
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        return run.LocalExecutor(ntasks_per_node=1, env_vars=env)  # one process: our torchrun starts the ranks

    if spec.ssh_host:
        user, _, host = spec.ssh_host.rpartition("@")
        tunnel = run.SSHTunnel(host=host, user=user or os.environ.get("USER", ""), job_dir=spec.remote_job_dir)
    else:
        tunnel = run.LocalTunnel(job_dir=str(nemorun_home / "slurm_jobs"))
    _install_sbatch_fixes()
    srun_args = None
    if spec.code_dir:
        packager = run.Packager()  # the code is already on the cluster (a mount): nothing to ship
        env.setdefault("PYTHONPATH", spec.code_dir)
        # NeMo-Run sets --container-workdir /nemo_run/code (where a packager unpacks); nothing is unpacked
        # here, so work in the repository instead; finalize_sbatch drops NeMo-Run's flag (one flag each)
        srun_args = [f"--container-workdir={spec.code_dir}"]
    else:
        packager = run.GitArchivePackager()  # ships git HEAD; extracted as the job's /nemo_run/code
        env.setdefault("PYTHONPATH", "/nemo_run/code")
    return run.SlurmExecutor(
        account=spec.account,
        partition=spec.partition,
        nodes=spec.nodes,
        ntasks_per_node=spec.procs_per_node,  # NeMo-Run turns this into torchrun --nproc-per-node
        gpus_per_node=spec.gpus_per_node,
        time=spec.time,
        container_image=spec.container_image,
        container_mounts=list(spec.container_mounts),
        job_name_prefix=f"{title}.",
        launcher="torchrun",
        tunnel=tunnel,
        packager=packager,
        env_vars=env,
        srun_args=srun_args,
        poll_estimated_start_time=False,
        exclusive=True if spec.exclusive else None,
        cpus_per_task=spec.cpus_per_task,
        mem=spec.mem,
        gres=spec.gres,
        signal=f"USR1@{spec.signal_before}" if spec.signal_before else None,
    )


def train_script_path(spec: LaunchSpec, script: str | None) -> str:
    """The training script as the launched job sees it."""
    if script:
        return script
    if spec.executor == "local":
        return str(REPO_ROOT / "scripts" / "train.py")
    return f"{spec.code_dir.rstrip('/')}/scripts/train.py" if spec.code_dir else "scripts/train.py"


def _experiment(title: str, spec: LaunchSpec, tasks: list[Task], script: str, nemorun_home: Path):
    import nemo_run as run

    executor = build_executor(spec, nemorun_home, title)
    exp = run.Experiment(title, executor=executor, log_level="WARN")
    if spec.executor != "local":
        return exp, executor, [run.Script(path=script, entrypoint="python", args=t.args) for t in tasks]
    status = nemorun_home / "exit_status"
    return exp, executor, [run.Script(path="red_megatron.launch.torchrun", m=True, entrypoint="python",
                                      args=["--standalone", "--nproc-per-node", str(spec.nproc), script, *t.args],
                                      env={"RED_EXIT_STATUS": str(status / f"{t.name}.json"),
                                           "RED_LAUNCH_STOP": str(status / "STOP")})
                           for t in tasks]


def _task_executor(executor, spec: LaunchSpec, task: Task):
    """The experiment's executor, or a copy carrying the task's engine step (its run_dir differs per task)."""
    lines = engine_setup_lines(spec, task)
    if lines is None:
        return executor
    ex = executor.clone()
    ex.setup_lines = "\n".join(filter(None, [ex.setup_lines, lines]))
    return ex


def render_dry_run(title: str, spec: LaunchSpec, tasks: list[Task], script: str, nemorun_home: Path) -> str:
    """The exact command (local) or sbatch script (Slurm) each task would run; launches nothing."""
    exp, executor, scripts = _experiment(title, spec, tasks, script, nemorun_home)
    out = []
    with exp:
        for task, s in zip(tasks, scripts):
            exp.add(s, executor=_task_executor(executor, spec, task), name=task.name, tail_logs=False)
        exp.dryrun(log=False, delete_exp_dir=True)
        for task, job in zip(tasks, exp.jobs):
            req = job._dryrun_info.request  # NeMo-Run keeps no public handle on it (0.11.1)
            if spec.executor == "slurm":
                body = req.materialize()
            else:
                lines = []
                for replicas in req.role_params.values():
                    for rep in replicas:
                        lines.append(shlex.join(rep.args))
                keys = sorted(k for k in ("PYTHONPATH", "NEMORUN_HOME", *spec.env) if k in job.executor.env_vars)
                env = " ".join(f"{k}={shlex.quote(job.executor.env_vars[k])}" for k in keys)
                body = "\n".join(f"{env} {line}".strip() for line in lines)
            out.append(f"# ---- task {task.name} ({spec.executor}) ----\n{body.rstrip()}\n")
    return "\n".join(out)


class _ForwardStop:
    """Locally: SIGINT/SIGTERM/SIGUSR1 are passed on to the tasks (this process's children, each in its own session)
    instead of interrupting NeMo-Run's wait, and a task not yet started is told to stay unstarted."""

    def __init__(self, stop_file: Path):
        self.stop_file, self.received = stop_file, None

    def __call__(self, signum, frame) -> None:
        import psutil

        if self.received is None:
            self.received = signal.Signals(signum).name
            self.stop_file.touch()
        for child in psutil.Process().children():
            try:
                child.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


def launch(title: str, spec: LaunchSpec, tasks: list[Task], script: str,
           nemorun_home: Path) -> tuple[dict[str, str], str | None, dict[str, str]]:
    """Run the experiment to completion (or submission, with detach); return ({task: final state}, the stop
    signal the launcher received locally or None, {task: its NeMo-Run job dir})."""
    exp, executor, scripts = _experiment(title, spec, tasks, script, nemorun_home)
    forward, old = None, {}
    if spec.executor == "local":
        status = nemorun_home / "exit_status"
        status.mkdir(parents=True, exist_ok=True)
        for f in status.iterdir():  # a previous launch's
            f.unlink()
        forward = _ForwardStop(status / "STOP")
        # SIGUSR1 too: a batch system's pre-timeout signal to an allocation that runs red-launch locally (its
        # default action would kill the launcher and leave the task running unwatched)
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
        # torchx's LocalScheduler, created lazily (also in the main thread, while NeMo-Run waits), installs
        # SIGINT/SIGTERM handlers of its own whose exception NeMo-Run's wait loop swallows: keep ours
        from torchx.schedulers import local_scheduler

        registered, local_scheduler._register_termination_signals = \
            local_scheduler._register_termination_signals, lambda: None
    try:
        with exp:
            for task, s in zip(tasks, scripts):
                exp.add(s, executor=_task_executor(executor, spec, task), name=task.name, tail_logs=True)
            exp.run(sequential=spec.run_sequential and len(tasks) > 1, detach=spec.detach)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if old:
            local_scheduler._register_termination_signals = registered
    # the context manager has waited for every job (unless detached): states are final now
    return job_states(exp), forward.received if forward else None, {j.id: j.executor.job_dir for j in exp.jobs}


def refusal_line(job_dir: str, task: str) -> str | None:
    """A local task's refusal (the cause of its last ``error: ...`` line, rank 0's, with or without torchrun's
    ``[defaultN]:`` prefix), from NeMo-Run's copy of its stderr."""
    for log in sorted(Path(job_dir).glob(f"**/{task}/0/stderr.log")):
        found = [m.group(1) for m in map(_REFUSAL_LINE.match, log.read_text(errors="replace").splitlines()) if m]
        if found:
            return found[-1]
    return None


_REFUSAL_LINE = re.compile(r"^(?:\[default\d+\]:)?error: (.+)$")


def exit_status(nemorun_home: Path, task: str) -> dict | None:
    """What a local task's ``red_megatron.launch.torchrun`` wrote on its way out (None: it did not get there)."""
    try:
        return json.loads((nemorun_home / "exit_status" / f"{task}.json").read_text())
    except (OSError, ValueError):
        return None


def job_states(exp) -> dict[str, str]:
    return {job.id: getattr(job.state, "name", str(job.state)) for job in exp.jobs}


def exit_code(states: dict[str, str], detached: bool) -> int:
    """0 only when every job SUCCEEDED (or, detached, was accepted by the scheduler)."""
    if not states:
        return 1
    ok = {"SUCCEEDED"} | ({"SUBMITTED", "PENDING", "RUNNING"} if detached else set())
    return 0 if all(s in ok for s in states.values()) else 1


def launcher_run_dir(spec: LaunchSpec, run_dir: Path) -> Path:
    """Where the launcher itself keeps the run's NeMo-Run records: the run dir as this machine sees it.

    ``run_dir`` is a path inside the job. Submitting from the login node (Slurm, no --ssh-host) the host
    side of its mount is the same directory (NeMo-Run mounts its job dir into the container as /nemo_run);
    locally and through an SSH tunnel it is ``run_dir`` itself.
    """
    if spec.executor == "slurm" and not spec.ssh_host and spec.container_image:
        host = spec.host_path(str(run_dir))
        if host is not None:
            return Path(host)
    return Path(run_dir)
