"""Let megatron-core (0.16 / 0.19) build and train a GPTModel on a CPU-only machine with gloo.

Why this exists: megatron-core assumes CUDA in a few dozen places that have nothing to do
with the maths: buffers created with ``device=torch.cuda.current_device()`` or
``device="cuda"``, ``.cuda()`` calls (pipeline schedules, RoPE, masks), the CUDA RNG tracker
(``model_parallel_cuda_manual_seed`` / ``get_cuda_rng_tracker().fork()``),
``torch.cuda.synchronize`` and ``torch.cuda.current_stream()`` (DDP grad sync in 0.19), and
``param.type() == 'torch.cuda.FloatTensor'`` checks in the optimizer. Developers' machines and
CI have no GPU, yet the TP/PP/checkpoint parity tests must run there.

This is the ONE place where megatron/torch.cuda is worked around (ARCHITECTURE.md rule 12).
``enable()`` is a no-op when CUDA is available, so the GPU path is never touched. On a CPU-only
machine it installs, once per process:

1. ``_CpuDeviceMode``, a global ``TorchFunctionMode`` that rewrites every CUDA device argument
   (``device="cuda"``, ``device=0``, ``torch.device("cuda", i)``) to the CPU, turns
   ``Tensor.cuda()`` into a no-op and makes ``Tensor.type()`` report the ``torch.cuda.*`` name
   the optimizer checks expect (a CPU fp32 tensor reports ``'torch.cuda.FloatTensor'``).
2. Stand-ins for ``torch.cuda.current_device`` (0), ``synchronize`` / ``set_device`` (no-ops),
   ``current_stream`` / ``default_stream`` / ``Stream`` / ``stream`` (a do-nothing stream) and
   ``Event``.
3. A CPU RNG tracker: megatron's ``CudaRNGStatesTracker`` forks the CUDA generator; here the
   "CUDA" generator *is* the CPU default generator, so fork swaps the CPU generator state in
   and out. ``model_parallel_cuda_manual_seed`` then seeds per-TP-rank streams exactly as on GPU.

Independently of CUDA, ``bind_missing_moe_names()`` fixes one megatron-core 0.16 bug: without
transformer-engine, ``moe_utils`` never binds ``te_general_gemm`` (its TE import failed inside a
``try``), so the MoE router raises ``NameError`` instead of taking its plain ``torch.mm`` path.
Binding the name to None selects that path; 0.19 binds it itself (then nothing is changed).

Only ever call ``enable()`` from ``red_megatron.policy`` (``parallel.init_model_parallel`` and
``model.build_model`` do); importing this module changes nothing by itself.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["bind_missing_moe_names", "enable", "is_active"]

_lock = threading.Lock()
_active = False
_mode: "_CpuDeviceMode | None" = None
_CPU = torch.device("cpu")


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    # megatron passes torch.cuda.current_device() (an int) as a device
    return isinstance(dev, int) and not isinstance(dev, bool)


def _map_device(dev):
    return _CPU if _is_cuda_device(dev) else dev


def _cuda_type_name(t: torch.Tensor) -> str:
    name = torch.Tensor.type(t)  # e.g. 'torch.FloatTensor'
    return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name


class _CpuDeviceMode(TorchFunctionMode):
    """Maps CUDA device requests to the CPU for every torch call made while it is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _cuda_type_name(args[0])
        if func is torch.Tensor.type:
            # cast request like t.type('torch.cuda.FloatTensor') -> CPU type of the same dtype
            args = tuple(a.replace("torch.cuda.", "torch.") if isinstance(a, str) else a for a in args)
            if isinstance(kwargs.get("dtype"), str):
                kwargs["dtype"] = kwargs["dtype"].replace("torch.cuda.", "torch.")
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func in (torch.Tensor.to, torch.Tensor.new_empty, torch.Tensor.new_zeros) or getattr(
            func, "__name__", ""
        ) in ("to",):
            args = tuple(_map_device(a) if isinstance(a, (str, torch.device)) else a for a in args)
        return func(*args, **kwargs)


class _NullStream:
    """A do-nothing CUDA stream: every op on the CPU is already ordered."""

    def __init__(self, *args, **kwargs):
        self.device = _CPU

    def wait_stream(self, *args, **kwargs):
        return None

    def wait_event(self, *args, **kwargs):
        return None

    def synchronize(self):
        return None

    def record_event(self, event=None):
        return event if event is not None else _NullEvent()

    def query(self) -> bool:
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NullEvent:
    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        return None

    def wait(self, *args, **kwargs):
        return None

    def synchronize(self):
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.synchronize = lambda *a, **k: None
    cuda.set_device = lambda *a, **k: None
    cuda.current_stream = lambda *a, **k: _NullStream()
    cuda.default_stream = lambda *a, **k: _NullStream()
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # manual_seed / manual_seed_all stay: without CUDA they are queued no-ops, and
    # torch.manual_seed calls them (patching them to torch.manual_seed would recurse).


def _patch_rng_tracker() -> None:
    """Make megatron's CUDA RNG tracker track the CPU default generator instead."""
    from megatron.core.tensor_parallel import random as mrandom

    def _get_state(device="cuda", clone=False, graph_safe=False):
        return torch.get_rng_state()

    def _set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    mrandom._get_cuda_rng_state = _get_state
    mrandom._set_cuda_rng_state = _set_state

    base = mrandom.CudaRNGStatesTracker

    class CpuRNGStatesTracker(base):  # type: ignore[misc, valid-type]
        """Same bookkeeping as megatron's tracker; the tracked generator is the CPU one."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    CpuRNGStatesTracker.__name__ = "CpuRNGStatesTracker"
    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom.initialize_rng_tracker(force_reset=True)


def _patch_autograd_backwards() -> None:
    """Run megatron's tensor-parallel autograd backwards under the device mode.

    Torch function modes are not active inside ``autograd.Function.backward`` (the engine runs it
    with an empty mode stack), so a backward that allocates with ``device=torch.cuda.current_device()``
    (sequence parallelism's reduce-scatter buffers, layers.py / mappings.py) would ask for a CUDA
    device. Each such backward re-enters the mode for its own duration.
    """
    from megatron.core.tensor_parallel import layers, mappings

    def wrap(fn):
        def backward(ctx, *grads):
            with _CpuDeviceMode():
                return fn(ctx, *grads)
        backward._red_cpu_mode = True
        return staticmethod(backward)

    for module in (layers, mappings):
        for obj in list(vars(module).values()):
            if not (isinstance(obj, type) and issubclass(obj, torch.autograd.Function) and "backward" in vars(obj)):
                continue
            raw = vars(obj)["backward"]
            fn = raw.__func__ if isinstance(raw, staticmethod) else raw
            if not getattr(fn, "_red_cpu_mode", False):
                obj.backward = wrap(fn)


def bind_missing_moe_names() -> None:
    """Bind ``moe_utils.te_general_gemm = None`` where megatron-core left it unbound (0.16 without TE)."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def is_active() -> bool:
    """True once ``enable()`` has installed the CPU stand-ins in this process."""
    return _active


def enable() -> bool:
    """Install the CPU stand-ins if CUDA is absent. Idempotent; returns whether they are active."""
    global _active, _mode
    if torch.cuda.is_available():
        return False
    with _lock:
        if _active:
            _ensure_mode_on_this_thread()
            return True
        _patch_torch_cuda()
        _patch_rng_tracker()
        _patch_autograd_backwards()
        _mode = _CpuDeviceMode()
        _active = True
        _ensure_mode_on_this_thread()
    return True


_thread_state = threading.local()


def _ensure_mode_on_this_thread() -> None:
    # Function modes live on a thread-local stack: push ours once per thread that calls enable().
    if getattr(_thread_state, "pushed", False) or _mode is None:
        return
    _mode.__enter__()
    _thread_state.pushed = True
