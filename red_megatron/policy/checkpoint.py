"""Distributed checkpoints: model + optimizer + scheduler + RNG + trainer state, written atomically.

Layout under a checkpoint root (a filesystem every rank sees):
    root/step_00000042/dist/        megatron dist_checkpointing (torch_dist) of model [+ optimizer]
    root/step_00000042/rng/rank00003.pt   each rank's RNG streams (torch, CUDA/tracker, python, numpy)
    root/step_00000042/meta.json    step, layout (tp, pp, dp), scheduler state, trainer state (JSON)
    root/latest                     the name of the newest complete checkpoint, replaced last

Atomicity: everything is written into ``root/.tmp.step_…``, fsynced, and renamed to its final
name; only then is ``latest`` replaced (write ``latest.tmp``, fsync, ``os.replace``). A process
killed at any point leaves ``latest`` naming the previous complete checkpoint; stale tmp dirs are
swept by the next save. ``load_checkpoint(root)`` follows ``latest``, never a tmp dir.

Resharding: model weights are saved as megatron ShardedTensors with global layer numbers, so a
checkpoint saved at one TP/PP loads at any other. The distributed optimizer's state is saved in
``distrib_optim_sharding_type`` 'dp_reshardable' (default; reshards across DP only: resume at the
same TP/PP) or 'fully_reshardable' (gathers on DP rank 0; reshards across TP/PP too). Megatron's
default format raises ``flattened_range is not supported`` in 0.16.1.

Optimizer-load pitfalls with the torch-AdamW fallback (no apex/TE; CPU_STACK.md): megatron's
``DistributedOptimizer.state_dict()`` asserts one shared step over existing states, so a fresh
optimizer (no state yet) cannot even build its loading state dict, and its ``load_state_dict``
installs ONE step tensor shared by every parameter, which torch's AdamW then increments once per
parameter per update. We therefore create zero states (step 0, zero moments: identical to a lazy
first step) before loading, and give every parameter its own step tensor after loading.

RNG: restored only when the layout (tp, pp, dp) matches the saved one; otherwise the streams of
the new layout keep their seeded values (reported in the returned info).
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from red_megatron.errors import CheckpointError

FORMAT_VERSION = 1
LATEST = "latest"
_STEP_NAME = re.compile(r"step_\d{8}")
SHARDING_TYPES = ("dp_reshardable", "fully_reshardable")


@dataclass(kw_only=True)
class LoadInfo:
    path: Path
    step: int
    trainer_state: dict
    loaded_optimizer: bool
    loaded_rng: bool
    saved_layout: dict


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _unwrap(chunk):
    return chunk.module if hasattr(chunk, "module") else chunk


def _model_sharded_state_dict(chunks: list) -> dict:
    if len(chunks) == 1:
        return {"model": _unwrap(chunks[0]).sharded_state_dict()}
    return {f"model{i}": _unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def init_optimizer_state(optimizer) -> None:
    """Zero AdamW states (step 0) for every parameter that has none, each with its own step tensor.

    Numerically a no-op: torch's AdamW would create exactly these on its first step.
    """
    for opt in _inner_optimizers(optimizer):
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state[p]
                if len(st) == 0:
                    st["step"] = torch.tensor(0.0, dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _untie_steps(optimizer) -> None:
    for opt in _inner_optimizers(optimizer):
        for st in opt.state.values():
            if "step" in st and isinstance(st["step"], torch.Tensor):
                st["step"] = st["step"].detach().clone()


@torch.no_grad()
def _load_optimizer_state(optimizer, state_dict: dict) -> None:
    """``optimizer.load_state_dict`` made to work on the torch-AdamW fallback (module doc).

    Megatron's DistributedOptimizer copies each parameter's loaded tensors with
    ``_set_main_param_and_optimizer_states``, which (0.16.1, 0.19.2) copies into leaf views outside
    no_grad and indexes a 'step' key that the 'fully_reshardable' format does not store. For the
    duration of this call each sub-optimizer gets an instance-level setter that copies the tensors
    present (param, exp_avg, exp_avg_sq) under no_grad; the step comes from the param groups (one
    common step, as megatron saves it) and is then untied into one tensor per parameter.
    """
    subs = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    patched = []
    for sub in subs:
        if hasattr(sub, "_get_main_param_and_optimizer_states"):
            def setter(model_param, tensors, _sub=sub):
                dst = _sub._get_main_param_and_optimizer_states(model_param)
                for k, v in dst.items():
                    if k != "step" and k in tensors and isinstance(tensors[k], torch.Tensor):
                        v.copy_(tensors[k])
            sub._set_main_param_and_optimizer_states = setter
            patched.append(sub)
    try:
        optimizer.load_state_dict(state_dict)
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states
    _untie_steps(optimizer)


def _inner_optimizers(optimizer) -> list:
    subs = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return [getattr(o, "optimizer", o) for o in subs]


def _rng_state() -> dict:
    import numpy as np

    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    try:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        st["tracker"] = get_cuda_rng_tracker().get_states()
    except Exception:  # noqa: BLE001 - a tracker that is not set up has nothing to save
        pass
    return st


def _set_rng_state(st: dict) -> None:
    import numpy as np

    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])
    if "tracker" in st:
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        get_cuda_rng_tracker().set_states(st["tracker"])


@contextlib.contextmanager
def _children_allowed():
    """megatron's torch_dist writer starts helper processes (a Manager queue, one forked writer per
    bucket); Python forbids children of a daemonic process (e.g. a multiprocessing worker pool such
    as the tests' gloo pool). Lift the flag for the duration of the write only."""
    proc = mp.current_process()
    was = proc.daemon
    if was:
        proc._config["daemon"] = False  # noqa: SLF001 - the documented flag behind Process.daemon
    try:
        yield
    finally:
        if was:
            proc._config["daemon"] = True  # noqa: SLF001


_WRITER_PRESTART: threading.Thread | None = None


def prestart_writer() -> None:
    """Start, in a background thread, the helper process megatron's torch_dist writer spawns on the first
    save (a multiprocessing Manager: ~1 s of process start-up and ~1 s importing torch's checkpoint
    classes, once per process, measured on the tiny recipe on the CPU), so that it overlaps
    model and engine building instead of delaying the first checkpoint. A no-op where megatron has no
    such helper (``_get_write_results_queue``) or when called again; any failure is left to the save,
    which starts the helper itself."""
    global _WRITER_PRESTART
    if _WRITER_PRESTART is not None or mp.current_process().daemon:
        return
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async
    except ImportError:
        return
    start = getattr(filesystem_async, "_get_write_results_queue", None)
    if start is None:
        return

    def run():
        # The helper inherits this thread's signal mask: torchrun stops a worker by signalling its process
        # group, and the helper must outlive the stop signal to write the checkpoint the trainer then saves
        # (the main thread, which does not block them, still receives the signals).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1})
        try:
            queue = start()
            # The helper imports torch's checkpoint classes when it first unpickles a write result
            # (~1 s): make it do that now, with a result of the same kind.
            from torch.distributed.checkpoint.metadata import MetadataIndex
            from torch.distributed.checkpoint.storage import WriteResult

            queue.put(WriteResult(index=MetadataIndex(fqn="prestart"), size_in_bytes=0, storage_data=None))
            queue.get()
        except Exception as e:  # noqa: BLE001 - the save will try again and report
            logging.getLogger(__name__).debug("checkpoint writer prestart failed: %s", e)

    _WRITER_PRESTART = threading.Thread(target=run, name="red-ckpt-writer-prestart", daemon=True)
    _WRITER_PRESTART.start()


def _save_strategy():
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=1)


def save_checkpoint(root, step: int, *, chunks: list, groups, optimizer=None, scheduler=None,
                    trainer_state: dict | None = None, sharding_type: str = "dp_reshardable",
                    keep_last: int | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    from megatron.core import dist_checkpointing

    if sharding_type not in SHARDING_TYPES:
        raise ValueError(f"sharding_type must be one of {SHARDING_TYPES}, got {sharding_type!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    trainer_state = dict(trainer_state or {})
    try:
        json.dumps(trainer_state)
    except TypeError as e:
        raise ValueError(f"trainer_state must be JSON-serialisable: {e}") from None
    root = Path(root)
    name = f"step_{step:08d}"
    tmp, final = root / f".tmp.{name}", root / name
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp.step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        (tmp / "dist").mkdir(parents=True)
        (tmp / "rng").mkdir()
    _barrier()

    sd = _model_sharded_state_dict(chunks)
    if optimizer is not None:
        init_optimizer_state(optimizer)
        sd["optimizer"] = optimizer.sharded_state_dict(sd, is_loading=False,
                                                       metadata={"distrib_optim_sharding_type": sharding_type})
    if _WRITER_PRESTART is not None:
        _WRITER_PRESTART.join()  # one helper, not a second one started beside it
    with _children_allowed():
        dist_checkpointing.save(sd, str(tmp / "dist"), sharded_strategy=_save_strategy())
    torch.save(_rng_state(), tmp / "rng" / f"rank{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        # the files megatron-core wrote beside the shards differ by version (0.16 writes common.pt,
        # 0.19 keeps that state inside the shards): a resume checks for exactly these
        dist_parts = sorted(f.name for f in (tmp / "dist").iterdir() if f.is_file() and f.suffix != ".distcp")
        meta = {"format_version": FORMAT_VERSION, "step": step, "layout": groups.layout(),
                "dist_parts": dist_parts, "megatron_core": _megatron_version(),
                "optimizer": optimizer is not None, "sharding_type": sharding_type,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "trainer_state": trainer_state}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step: the old copy goes only after the new one is complete
            old = root / f".old.{name}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
        pointer = root / f"{LATEST}.tmp"
        with open(pointer, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, root / LATEST)
        _fsync_dir(root)
        if keep_last is not None and keep_last >= 1:
            done = sorted(p for p in root.glob("step_*") if p.is_dir())
            for old in done[:-keep_last]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def resolve_checkpoint(path) -> Path | None:
    """A checkpoint directory from a root (via ``latest``) or a checkpoint directory itself; None when
    there is no ``latest`` at all (a fresh root, or a crash before the first save finished).

    A ``latest`` that is there but malformed (a directory, bytes that are not ``step_NNNNNNNN``, a step
    that is absent or incomplete) is a CheckpointError, never "no checkpoint": that would retrain from
    step 0 and overwrite the run's logged steps."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    pointer = p / LATEST
    if not (pointer.exists() or pointer.is_symlink()):
        return None
    if not pointer.is_file():
        kind = "a directory" if pointer.is_dir() else "not a regular file"
        raise CheckpointError(f"malformed checkpoint pointer in {pointer}: expected a file naming the newest "
                              f"step_NNNNNNNN directory, found {kind}")
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        name = None
    if name is None or not _STEP_NAME.fullmatch(name):
        shown = "undecodable bytes" if name is None else repr(name[:40])
        raise CheckpointError(f"malformed checkpoint pointer in {pointer}: expected 'step_NNNNNNNN' (8 digits), "
                              f"found {shown}")
    target = p / name
    if not target.is_dir():
        raise CheckpointError(f"missing checkpoint in {p}: {LATEST} names {name}, which is absent (expected "
                              f"one of {sorted(x.name for x in p.glob('step_*') if x.is_dir()) or 'none'})")
    if not (target / "meta.json").is_file():
        raise CheckpointError(f"incomplete checkpoint in {target}: {LATEST} names it, but it has no meta.json")
    return target


# torch_dist's files beside the *.distcp shards that every megatron-core version writes; the rest
# (0.16's common.pt) are listed in meta.json's dist_parts by the save that wrote them
DIST_PARTS = ("metadata.json", ".metadata")


def _megatron_version() -> str:
    """The installed release ("0.19.2"); 0.19's own __version__ appends the cwd's git revision."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("megatron-core")
    except PackageNotFoundError:
        return "unknown"


def _read_meta(ckpt: Path) -> dict:
    """meta.json, and every part a resume needs present (a missing one is named)."""
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"unreadable checkpoint part in {ckpt / 'meta.json'}: expected complete JSON "
                              f"({e})") from None
    # a checkpoint saved before meta.json listed its parts was written by 0.16, which writes common.pt
    listed = meta.get("dist_parts", ("common.pt",))
    for part in sorted(set(DIST_PARTS) | set(listed)):
        if not (ckpt / "dist" / part).is_file():
            raise CheckpointError(f"missing checkpoint part in {ckpt}: expected dist/{part}")
    if not any((ckpt / "dist").glob("*.distcp")):
        raise CheckpointError(f"missing checkpoint part in {ckpt}: expected dist/*.distcp (the tensor shards)")
    _check_dist_files(ckpt / "dist")
    return meta


def _check_dist_files(dist_dir: Path) -> None:
    """Name a damaged file before megatron-core reads the shards (its own error names none): .metadata
    that does not unpickle, a shard shorter than the bytes .metadata places in it, a shard it names that
    is absent, a common.pt (0.16) that is not a whole torch.save archive."""
    import zipfile

    from torch.distributed.checkpoint import FileSystemReader

    try:
        md = FileSystemReader(str(dist_dir)).read_metadata()
    except Exception as e:  # noqa: BLE001 - a truncated pickle raises EOFError, UnpicklingError, ...
        raise CheckpointError(f"unreadable checkpoint part in {dist_dir / '.metadata'}: expected torch's distributed "
                              f"checkpoint metadata ({type(e).__name__}: {str(e)[:200]})") from None
    need: dict[str, int] = {}  # shard file -> the bytes .metadata says it holds
    for info in (getattr(md, "storage_data", None) or {}).values():
        path, end = getattr(info, "relative_path", None), getattr(info, "offset", 0) + getattr(info, "length", 0)
        if path is not None:
            need[path] = max(need.get(path, 0), end)
    for name, size in sorted(need.items()):
        f = dist_dir / name
        if not f.is_file():
            raise CheckpointError(f"missing checkpoint part in {dist_dir.parent}: expected dist/{name} "
                                  "(listed in dist/.metadata)")
        if f.stat().st_size < size:
            raise CheckpointError(f"truncated checkpoint part in {f}: expected at least {size} bytes (where "
                                  f"dist/.metadata places its tensors), found {f.stat().st_size}")
    common = dist_dir / "common.pt"
    if common.is_file() and not zipfile.is_zipfile(common):
        raise CheckpointError(f"truncated checkpoint part in {common}: expected a complete torch.save archive")


def _sharded_tensors(tree):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if isinstance(tree, ShardedTensor):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _sharded_tensors(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _sharded_tensors(v)


def check_model_shapes(ckpt: Path, sharded_sd: dict) -> None:
    """Each model tensor's global shape against the one the checkpoint saved (dist/.metadata), so a
    checkpoint of another model is one line naming the directory and the tensor, not megatron's
    traceback. Tensors megatron lets differ (the padded vocabulary: ``allow_shape_mismatch``) are skipped."""
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(ckpt / "dist")).read_metadata().state_dict_metadata
    for st in _sharded_tensors(sharded_sd):
        meta = saved.get(st.key)
        if meta is None or getattr(st, "allow_shape_mismatch", False) or not hasattr(meta, "size"):
            continue
        if tuple(meta.size) != tuple(st.global_shape):
            raise CheckpointError(f"model shape mismatch in {ckpt}: tensor {st.key} is {list(meta.size)} there, "
                                  f"{list(st.global_shape)} in this run's model: expected a checkpoint of this "
                                  f"model (another model_dir, or another run_dir)")


def load_checkpoint(path, *, chunks: list, groups, optimizer=None, scheduler=None, load_optimizer: bool = True,
                    load_rng: bool = True) -> LoadInfo:
    """Collective. Loads weights into ``chunks`` (any TP/PP); optimizer + scheduler when given and
    ``load_optimizer`` (the optimizer needs the saved TP/PP unless saved 'fully_reshardable')."""
    from megatron.core import dist_checkpointing

    ckpt = resolve_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint at {path} (neither meta.json nor a '{LATEST}' pointer)")
    meta = _read_meta(ckpt)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{ckpt}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    layout, saved = groups.layout(), meta["layout"]
    want_opt = optimizer is not None and load_optimizer
    if want_opt and not meta["optimizer"]:
        raise ValueError(f"{ckpt} has no optimizer state; pass load_optimizer=False to load weights only")
    if want_opt and meta["sharding_type"] == "dp_reshardable" and (saved["tp"], saved["pp"]) != (layout["tp"], layout["pp"]):
        raise ValueError(f"{ckpt}: optimizer saved 'dp_reshardable' at tp={saved['tp']} pp={saved['pp']} cannot load at "
                         f"tp={layout['tp']} pp={layout['pp']}; load weights only (load_optimizer=False) or save "
                         f"with sharding_type='fully_reshardable'")

    sd = _model_sharded_state_dict(chunks)
    check_model_shapes(ckpt, sd)
    if want_opt:
        init_optimizer_state(optimizer)
        sd["optimizer"] = optimizer.sharded_state_dict(sd, is_loading=True,
                                                       metadata={"distrib_optim_sharding_type": meta["sharding_type"]})
    try:
        loaded = dist_checkpointing.load(sd, str(ckpt / "dist"))
    except Exception as e:  # noqa: BLE001 - a damaged part surfaces as many types: name the directory
        raise CheckpointError(f"unreadable checkpoint part in {ckpt / 'dist'}: expected a complete distributed "
                              f"checkpoint ({type(e).__name__}: {str(e)[:300]})") from e
    for key, chunk in zip(["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))], chunks):
        _unwrap(chunk).load_state_dict(loaded[key], strict=True)
    if want_opt:
        _load_optimizer_state(optimizer, loaded["optimizer"])
        if scheduler is not None and meta["scheduler"] is not None:
            scheduler.num_steps = 0  # megatron's load_state_dict ADDS the saved count to the current one
            scheduler.load_state_dict(meta["scheduler"])
    elif optimizer is not None and hasattr(optimizer, "reload_model_params"):
        optimizer.reload_model_params()  # fp32 main copies follow the loaded weights
    rng_ok = False
    rng_file = ckpt / "rng" / f"rank{_rank():05d}.pt"
    if load_rng and saved == layout and rng_file.is_file():
        try:
            _set_rng_state(torch.load(rng_file, weights_only=False))
        except Exception as e:  # noqa: BLE001 - a truncated pickle: name the file
            raise CheckpointError(f"unreadable RNG state in {rng_file}: expected a complete torch.save file "
                                  f"({type(e).__name__}: {e})") from e
        rng_ok = True
    elif load_rng and saved == layout:
        msg = (f"resuming {ckpt} WITHOUT its RNG state: {rng_file} is missing; the sampling streams keep their "
               f"seeded values (the run is not bit-exact with an uninterrupted one)")
        warnings.warn(msg, stacklevel=2)
        logging.getLogger(__name__).warning(msg)
    _barrier()
    return LoadInfo(path=ckpt, step=int(meta["step"]), trainer_state=meta["trainer_state"],
                    loaded_optimizer=want_opt, loaded_rng=rng_ok, saved_layout=saved)
