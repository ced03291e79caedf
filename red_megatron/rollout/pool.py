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
import logging
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


log = logging.getLogger("red_megatron.rollout.pool")


def engine_env(index: int, rollout_cfg) -> dict[str, str]:
    """Engine ``index``'s own devices (rollout.engine_devices: tp_infer consecutive entries an engine), so that
    it never shares the trainer's GPUs."""
    devices = getattr(rollout_cfg, "engine_devices", None)
    if devices is None:
        return {}
    tp = getattr(rollout_cfg, "tp_infer", 1)
    mine = [d.strip() for d in str(devices).split(",")][index * tp:(index + 1) * tp]
    return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}


def engine_command(index: int, address: str, model_dir, rollout_cfg, parent_pid: int) -> list[str]:
    """An engine process (tp_infer 1), or a torchrun group of tp_infer processes (vLLM's external_launcher)."""
    cmd = ["-m", "red_megatron.rollout.remote", "--address", address, "--index", str(index), "--model-dir",
           str(model_dir), "--rollout-json", json.dumps(asdict(rollout_cfg)), "--parent-pid", str(parent_pid)]
    if rollout_cfg.tp_infer == 1:
        return [sys.executable, *cmd]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(rollout_cfg.tp_infer), *cmd]


class EngineError(RuntimeError):
    """A rollout engine process died, hung or failed; the message names it."""


class _Engine:
    def __init__(self, index: int, proc: subprocess.Popen | None):
        self.index, self.proc, self.conn = index, proc, None
        self.pid, self.host = (proc.pid if proc is not None else None), None  # external: from its hello

    @property
    def name(self) -> str:
        where = f" on {self.host}" if self.proc is None and self.host else ""
        return f"rollout engine {self.index} (pid {self.pid}{where})"

    def exit_status(self) -> int | None:
        """The spawned process's exit status (None: running); an external engine is judged by its connection."""
        return self.proc.poll() if self.proc is not None else None


def write_join_files(join_dir, *, address: str, authkey: bytes, model_dir, rollout_cfg, num_engines: int) -> None:
    """What an external engine needs to join: contact.json (world-readable: no secret in it) and the per-run
    secret in a file only this user can read (created 0600, never on a command line)."""
    from pathlib import Path

    d = Path(join_dir)
    d.mkdir(parents=True, exist_ok=True)
    secret = d / "secret"
    secret.unlink(missing_ok=True)
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(authkey.hex())
    # the job id lets an engine of this Slurm job tell this contact from a previous job's in the same run_dir
    contact = {"address": address, "model_dir": str(model_dir), "rollout": asdict(rollout_cfg),
               "num_engines": num_engines, "job": os.environ.get("SLURM_JOB_ID")}
    tmp = d / "contact.json.tmp"
    tmp.write_text(json.dumps(contact, indent=1))
    tmp.replace(d / "contact.json")


class EnginePool:
    def __init__(self, model_dir, rollout_cfg, *, num_engines: int, timeout_s: float, start_timeout_s: float,
                 host: str = "127.0.0.1", env: dict | None = None, join_dir=None, port: int = 0):
        """``join_dir`` None: start ``num_engines`` engine processes here. Otherwise wait for ``num_engines``
        external engines (``python -m red_megatron.rollout.remote --join JOIN_DIR --index i``, started by a
        launcher on any node that reaches ``host``): the contact and the secret are written there."""
        self.timeout_s, self.host = float(timeout_s), host
        self.engines: list[_Engine] = []
        self.refused: list[str] = []  # peers that failed the per-run secret
        self.pg = None
        self._closed = False
        authkey = secrets.token_bytes(16)
        self._listener = Listener((host, port), authkey=authkey)
        address = f"{host}:{self._listener.address[1]}"
        self.tp = rollout_cfg.tp_infer  # processes an engine (its ranks all join the weight group)
        atexit.register(self.close)
        try:
            if join_dir is not None:
                self.engines = [_Engine(i, None) for i in range(num_engines)]
                write_join_files(join_dir, address=address, authkey=authkey, model_dir=model_dir,
                                 rollout_cfg=rollout_cfg, num_engines=num_engines)
            for i in range(num_engines if join_dir is None else 0):
                cmd = engine_command(i, address, model_dir, rollout_cfg, os.getpid())
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
        got: dict[int, tuple[object, dict]] = {}
        errors: list[BaseException] = []

        def accept():
            from multiprocessing import AuthenticationError

            while len(got) < len(self.engines):
                try:
                    conn = self._listener.accept()
                except AuthenticationError:  # a peer without the per-run secret: refused, named, not fatal
                    peer = self._listener.last_accepted
                    who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
                    self.refused.append(who)
                    log.warning("rollout: refused a connection from %s: it does not hold this run's engine secret",
                                who)
                    continue
                except BaseException as exc:  # noqa: BLE001 - the listener closed under us
                    errors.append(exc)
                    return
                try:
                    tag, hello = conn.recv()
                    index = int(hello["index"])
                except Exception as exc:  # noqa: BLE001 - an authenticated peer speaking nonsense
                    log.warning("rollout: a connection sent no valid hello (%r): closed", exc)
                    conn.close()
                    continue
                if not 0 <= index < len(self.engines) or index in got:
                    log.warning("rollout: refused engine index %s (expected 0..%d, each once)", hello.get("index"),
                                len(self.engines) - 1)
                    conn.close()
                    continue
                got[index] = (conn, hello)

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive() and time.monotonic() < deadline:
            for e in self.engines:
                if e.index not in got and e.exit_status() is not None:
                    raise EngineError(f"{e.name} exited with status {e.exit_status()} before it connected")
            t.join(0.2)
        if len(got) < len(self.engines):
            missing = [e.name if e.proc is not None else f"rollout engine {e.index}" for e in self.engines
                       if e.index not in got]
            refused = f"; refused {len(self.refused)} connection(s) without this run's secret, from " \
                      f"{', '.join(self.refused)}" if self.refused else ""
            raise EngineError(f"{', '.join(missing)} did not connect within rollout.start_timeout_s="
                              f"{timeout_s:g} s" + refused + (f" ({errors[0]!r})" if errors else ""))
        for e in self.engines:
            e.conn, hello = got[e.index]
            if e.proc is None:
                e.pid, e.host = hello.get("pid"), hello.get("host")

    def _recv(self, e: _Engine, timeout_s: float | None = None, *, what: str):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if e.conn.poll(0.2):
                    status, payload = e.conn.recv()
                    break
            except (EOFError, OSError):
                time.sleep(0.2)  # a dead engine closes its socket: name it with its exit status (spawned ones)
                raise EngineError(f"{e.name} died during {what} (exit status {e.exit_status()})") from None
            if e.exit_status() is not None:
                raise EngineError(f"{e.name} died during {what} (exit status {e.exit_status()})")
            if time.monotonic() > deadline:
                raise EngineError(f"{e.name} did not answer {what} within rollout.timeout_s={timeout_s:g} s")
        if status != "ok":
            raise EngineError(f"{e.name} failed in {what}:\n{payload}")
        return payload

    def _send(self, e: _Engine, op: str, **kwargs) -> None:
        try:
            e.conn.send((op, kwargs))
        except (EOFError, OSError):
            raise EngineError(f"{e.name} is gone (sending {op}; exit status {e.exit_status()})") from None

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

        size = len(self.engines) * self.tp + 1
        # the store lives as long as the pool (the group's peers may reconnect through it)
        self._store = store = dist.TCPStore(self.host, 0, size, is_master=True,
                                            timeout=datetime.timedelta(seconds=self.timeout_s), wait_for_workers=False)
        for i, e in enumerate(self.engines):
            self._send(e, "join_weights", host=self.host, port=store.port, rank=1 + i * self.tp, size=size,
                       timeout_s=self.timeout_s, plan=plan)
        self.pg = weight_group(self.host, store.port, 0, size, self.timeout_s)
        for e in self.engines:
            self._recv(e, what="join_weights")
        self.plan, self.layout = plan, plan.buckets

    def refit(self, weights, version: int) -> dict:
        """Broadcast the plan's tensors bucket by bucket to every engine. ``weights``: (hf name, tensor) pairs in
        the plan's order (a generator: each bucket goes out as soon as its tensors are gathered, so no full copy of
        the model is held), or a dict of staged tensors."""
        t0 = time.perf_counter()
        named = ((n, weights[n]) for n in self.plan.names) if isinstance(weights, dict) else iter(weights)
        for e in self.engines:
            self._send(e, "refit", version=version)
        nbytes = 0
        try:
            for names in self.layout:
                parts = []
                for want in names:
                    name, t = next(named)
                    if name != want:
                        raise EngineError(f"refit: the trainer sent {name!r} where the plan expects {want!r}")
                    parts.append(t.detach().to(_wire_device(), self.plan.dtype).contiguous().reshape(-1)
                                 .view(torch.uint8))
                buf = torch.cat(parts)
                del parts
                nbytes += buf.numel()
                broadcast_bytes(self.pg, buf)
        except RuntimeError as exc:  # gloo: a peer gone or the op past its timeout
            for e in self.engines:
                if e.exit_status() is not None:
                    raise EngineError(f"{e.name} died during refit (exit status {e.exit_status()})") from exc
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
            if e.conn is not None and e.exit_status() is None:
                try:
                    e.conn.send(("close", {}))
                except (EOFError, OSError):
                    pass
        deadline = time.monotonic() + 10.0
        for e in self.engines:
            if e.proc is None:  # external: it exits when its control connection closes (below)
                if e.conn is not None:
                    e.conn.close()
                continue
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
