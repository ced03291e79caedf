"""The trainer's side of disaggregated engines: start, health-check, drive and stop them (rank 0 only).

:class:`EnginePool` starts ``num_engines`` processes of :mod:`red_megatron.rollout.remote`, each in its
own session (so stopping one kills its whole process group), and waits for their hello within
``start_timeout_s``. Every reply is awaited under ``timeout_s`` and polled every 0.2 s for the
engine's exit, so a dead engine (``kill -9``) raises :class:`EngineError` naming it (index, pid,
exit status) within a fraction of a second, and a hung one within ``timeout_s``; never a hang.
:meth:`close` (also at interpreter exit) asks each engine to stop, then kills its group.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from multiprocessing.connection import Listener

import torch

from red_megatron.rollout.remote import AUTHKEY_ENV, _wire_device, broadcast_bytes, weight_group


def engine_env(index: int, rollout_cfg) -> dict[str, str]:
    """Engine ``index``'s own device (rollout.engine_devices), so that it never shares the trainer's GPUs."""
    devices = getattr(rollout_cfg, "engine_devices", None)
    if devices is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(devices).split(",")[index].strip()}


class EngineError(RuntimeError):
    """A rollout engine process died, hung or failed; the message names it."""


class _Engine:
    def __init__(self, index: int, proc: subprocess.Popen):
        self.index, self.proc, self.conn = index, proc, None

    @property
    def name(self) -> str:
        return f"rollout engine {self.index} (pid {self.proc.pid})"


class EnginePool:
    def __init__(self, model_dir, rollout_cfg, *, num_engines: int, timeout_s: float, start_timeout_s: float,
                 host: str = "127.0.0.1", env: dict | None = None):
        self.timeout_s, self.host = float(timeout_s), host
        self.engines: list[_Engine] = []
        self.pg = None
        self._closed = False
        authkey = secrets.token_bytes(16)
        self._listener = Listener((host, 0), authkey=authkey)
        address = f"{host}:{self._listener.address[1]}"
        cfg_json = json.dumps(asdict(rollout_cfg))
        atexit.register(self.close)
        try:
            for i in range(num_engines):
                cmd = [sys.executable, "-m", "red_megatron.rollout.remote", "--address", address, "--index", str(i),
                       "--model-dir", str(model_dir), "--rollout-json", cfg_json, "--parent-pid", str(os.getpid())]
                penv = dict(os.environ, **(env or {}), **{AUTHKEY_ENV: authkey.hex()}, **engine_env(i, rollout_cfg))
                for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                          "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"):
                    penv.pop(k, None)  # an engine is no rank of the trainer's torchrun world
                self.engines.append(_Engine(i, subprocess.Popen(cmd, env=penv, start_new_session=True)))
            self._accept_all(start_timeout_s)
            for e in self.engines:  # each builds its vLLM engine, then says ok
                self._recv(e, start_timeout_s, what="start")
        except BaseException:
            self.close()
            raise

    # --- connections --------------------------------------------------------------------------------
    def _accept_all(self, timeout_s: float) -> None:
        got: dict[int, object] = {}
        errors: list[BaseException] = []

        def accept():
            try:
                while len(got) < len(self.engines):
                    conn = self._listener.accept()
                    tag, hello = conn.recv()
                    got[int(hello["index"])] = conn
            except BaseException as exc:  # noqa: BLE001 - the listener closed under us, or a bad client
                errors.append(exc)

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive() and time.monotonic() < deadline:
            for e in self.engines:
                if e.index not in got and e.proc.poll() is not None:
                    raise EngineError(f"{e.name} exited with status {e.proc.returncode} before it connected")
            t.join(0.2)
        if len(got) < len(self.engines):
            missing = [e.name for e in self.engines if e.index not in got]
            raise EngineError(f"{', '.join(missing)} did not connect within rollout.start_timeout_s="
                              f"{timeout_s:g} s" + (f" ({errors[0]!r})" if errors else ""))
        for e in self.engines:
            e.conn = got[e.index]

    def _recv(self, e: _Engine, timeout_s: float | None = None, *, what: str):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if e.conn.poll(0.2):
                    status, payload = e.conn.recv()
                    break
            except (EOFError, OSError):
                e.proc.poll()  # a dead engine closes its socket: name it with its exit status
                time.sleep(0.2)
                raise EngineError(f"{e.name} died during {what} (exit status {e.proc.poll()})") from None
            if e.proc.poll() is not None:
                raise EngineError(f"{e.name} died during {what} (exit status {e.proc.returncode})")
            if time.monotonic() > deadline:
                raise EngineError(f"{e.name} did not answer {what} within rollout.timeout_s={timeout_s:g} s")
        if status != "ok":
            raise EngineError(f"{e.name} failed in {what}:\n{payload}")
        return payload

    def _send(self, e: _Engine, op: str, **kwargs) -> None:
        try:
            e.conn.send((op, kwargs))
        except (EOFError, OSError):
            raise EngineError(f"{e.name} is gone (sending {op}; exit status {e.proc.poll()})") from None

    def call_all(self, op: str, per_engine: list[dict] | None = None, **kwargs) -> list:
        """Send ``op`` to every engine (each its own kwargs from ``per_engine``), then collect every reply."""
        targets = self.engines if per_engine is None else self.engines[:len(per_engine)]
        for i, e in enumerate(targets):
            self._send(e, op, **(per_engine[i] if per_engine is not None else kwargs))
        return [self._recv(e, what=op) for e in targets]

    def ping(self) -> list[dict]:
        return self.call_all("ping")

    # --- weights --------------------------------------------------------------------------------------
    def join_weights(self, plan) -> None:
        """Open the weight channel (rank 0 of it here) and hand every engine the plan, once."""
        import datetime

        import torch.distributed as dist

        size = len(self.engines) + 1
        # the store lives as long as the pool (the group's peers may reconnect through it)
        self._store = store = dist.TCPStore(self.host, 0, size, is_master=True,
                                            timeout=datetime.timedelta(seconds=self.timeout_s), wait_for_workers=False)
        for i, e in enumerate(self.engines):
            self._send(e, "join_weights", host=self.host, port=store.port, rank=i + 1, size=size,
                       timeout_s=self.timeout_s, plan=plan)
        self.pg = weight_group(self.host, store.port, 0, size, self.timeout_s)
        for e in self.engines:
            self._recv(e, what="join_weights")
        self.plan, self.layout = plan, plan.buckets

    def refit(self, weights: dict[str, torch.Tensor], version: int) -> dict:
        """Broadcast ``weights`` (hf name -> tensor, the plan's names) bucket by bucket to every engine."""
        t0 = time.perf_counter()
        for e in self.engines:
            self._send(e, "refit", version=version)
        nbytes = 0
        try:
            for names in self.layout:
                buf = torch.cat([weights[n].detach().to(_wire_device(), self.plan.dtype).contiguous().reshape(-1)
                                 .view(torch.uint8) for n in names])
                nbytes += buf.numel()
                broadcast_bytes(self.pg, buf)
        except RuntimeError as exc:  # gloo: a peer gone or the op past its timeout
            for e in self.engines:
                if e.proc.poll() is not None:
                    raise EngineError(f"{e.name} died during refit (exit status {e.proc.returncode})") from exc
            raise EngineError(f"refit broadcast failed within rollout.timeout_s={self.timeout_s:g} s: {exc}") from exc
        replies = [self._recv(e, what="refit") for e in self.engines]
        return {"seconds": time.perf_counter() - t0, "buckets": len(self.layout), "bytes": nbytes,
                "engine_seconds": [r["seconds"] for r in replies]}

    # --- shutdown -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for e in self.engines:
            if e.conn is not None and e.proc.poll() is None:
                try:
                    e.conn.send(("close", {}))
                except (EOFError, OSError):
                    pass
        deadline = time.monotonic() + 10.0
        for e in self.engines:
            try:
                e.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the whole session: the engine and anything it started
                os.killpg(e.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            e.proc.poll()
        try:
            self._listener.close()
        except OSError:
            pass
        self.pg = None
