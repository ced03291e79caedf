"""Refit on the GPU, without vLLM: Megatron layout -> HF names -> buckets -> vLLM's parameter layout.

vLLM cannot be installed on the GPU machine (../shared/GPU.md), so the destination is an emulation
of what vLLM's Qwen2ForCausalLM holds at TP_infer=1 and what its ``load_weights`` does with each
(HF name, tensor) pair: fused ``qkv_proj`` and ``gate_up_proj`` parameters, each HF shard copied
into its row slice (vLLM's ``stacked_params_mapping`` + the default ``weight_loader``'s
narrow-and-copy), the rest copied whole. Everything upstream of that copy is the project's own
code, unchanged: the Megatron model (``policy.model.build_model``), ``convert.stream_hf_weights``
(TP gather, PP hand-over, un-fusing Megatron's per-group QKV and gate/up), ``rollout.refit.RefitPlan``
(built against the destination's expected names and shapes) and ``rollout.refit.refit`` (buckets).

For each bucket size it reports (median of --repeats after one warm-up, CUDA-synchronised):
  seconds        the whole refit, stream + buckets + destination copies
  GB/s           model bytes / seconds
  roofline_s     one device-to-device copy of the same number of bytes (measured here, same run)
  peak_extra_MiB torch.cuda.max_memory_allocated during the refit above the level before it
  bound_MiB      the refit's own bound: largest bucket + the largest tensor in flight
and once: the stream alone (gather and un-fuse, no destination) to show where the time goes.
After the first refit every destination element is checked bit-exactly against the model.

Goal (issue 6): <= 0.2 s for the Qwen2.5-1.5B shape colocated on one H100.

  python3 benchmarks/refit_gpu_bench.py --out $OUT                 # GPU: 1.5b, bf16
  python3 benchmarks/refit_gpu_bench.py --shape smoke --out /tmp   # CPU smoke test (fp32)
Writes refit_gpu_bench.json under --out and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import SHAPES, hf_config_dict, rows_beside, run_meta, sync, wall_times  # noqa: E402

MiB = 1 << 20


class VllmLayoutSink:
    """The engine side of ``refit``: vLLM's Qwen2/Llama parameter layout at TP_infer=1, on one device.

    ``expected_weights`` (HF name -> (shape, None)) is derived from the config here, independently of
    the trainer's ``hf_weight_specs``, so ``RefitPlan.build`` cross-checks the two.
    """

    def __init__(self, cfg: dict, device: torch.device, dtype: torch.dtype):
        h, L, V, f = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
        nh, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        d = cfg.get("head_dim") or h // nh
        q, k = nh * d, kv * d
        self.dtype, self.device = dtype, device
        self.params: dict[str, torch.Tensor] = {}
        self.route: dict[str, tuple[str, int]] = {}  # HF name -> (vLLM param, row offset)
        self.expected_weights: dict[str, tuple[tuple[int, ...], None]] = {}

        def param(name, shape):
            self.params[name] = torch.full(shape, float("nan"), dtype=dtype, device=device)

        def whole(name, shape):
            param(name, shape)
            self.route[name] = (name, 0)
            self.expected_weights[name] = (tuple(shape), None)

        def stacked(fused, parts, cols):
            rows = sum(r for _, r in parts)
            param(fused, (rows, *cols))
            off = 0
            for hf_name, r in parts:
                self.route[hf_name] = (fused, off)
                self.expected_weights[hf_name] = ((r, *cols), None)
                off += r

        whole("model.embed_tokens.weight", (V, h))
        for i in range(L):
            p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
            whole(p + "input_layernorm.weight", (h,))
            stacked(a + "qkv_proj.weight", [(a + "q_proj.weight", q), (a + "k_proj.weight", k),
                                            (a + "v_proj.weight", k)], (h,))
            if cfg.get("model_type") == "qwen2" or cfg.get("attention_bias"):
                stacked(a + "qkv_proj.bias", [(a + "q_proj.bias", q), (a + "k_proj.bias", k),
                                              (a + "v_proj.bias", k)], ())
            whole(a + "o_proj.weight", (h, q))
            whole(p + "post_attention_layernorm.weight", (h,))
            stacked(p + "mlp.gate_up_proj.weight", [(p + "mlp.gate_proj.weight", f),
                                                     (p + "mlp.up_proj.weight", f)], (h,))
            whole(p + "mlp.down_proj.weight", (h, f))
        whole("model.norm.weight", (h,))
        if not cfg.get("tie_word_embeddings", False):
            whole("lm_head.weight", (V, h))
        self._loaded: set[str] = set()

    # --- the four calls rollout.refit.refit makes
    def begin_weight_update(self) -> None:
        self._loaded = set()

    def load_weights(self, batch) -> None:
        for name, t in batch:
            fused, off = self.route[name]
            self.params[fused].narrow(0, off, t.shape[0]).copy_(t, non_blocking=True)
            self._loaded.add(name)

    def finish_weight_update(self) -> list[str]:
        return [n for n in self.route if n not in self._loaded]

    def reset_prefix_cache(self) -> None:
        pass

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params.values())

    def check_against(self, stream) -> dict:
        """Every destination slice equals the model's tensor bit-exactly, and no NaN fill survives."""
        worst, n = 0.0, 0
        for name, t in stream:
            if name not in self.route:
                continue
            fused, off = self.route[name]
            got = self.params[fused].narrow(0, off, t.shape[0])
            worst = max(worst, (got.float() - t.to(self.dtype).float()).abs().max().item())
            n += 1
        nan = sum(int(torch.isnan(p).sum().item()) for p in self.params.values())
        return {"tensors_checked": n, "max_abs_diff": worst, "nan_left": nan, "exact": worst == 0.0 and nan == 0}


def _peak_reset():
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return 0


def _peak_extra(base: int) -> float | None:
    if torch.cuda.is_available():
        return (torch.cuda.max_memory_allocated() - base) / MiB
    return None


def copy_roofline(nbytes: int, device, repeats: int) -> float:
    """Seconds for one device-to-device copy of ``nbytes`` (one read + one write of every byte)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    secs = statistics.median(wall_times(lambda: dst.copy_(src), repeats))
    del src, dst
    return secs


def parse_bucket(s: str, whole: int) -> int:
    s = s.strip().lower()
    if s == "whole":
        return whole
    for suf, mul in (("gib", 1 << 30), ("mib", MiB), ("kib", 1 << 10)):
        if s.endswith(suf):
            return int(float(s[: -len(suf)]) * mul)
    return int(s)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="1.5b", choices=sorted(SHAPES))
    ap.add_argument("--buckets", default="0,64MiB,256MiB,1GiB,whole",
                    help="bucket sizes (0 = one tensor a bucket, 'whole' = the model in one bucket)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=".")
    args = ap.parse_args(argv)

    from red_megatron.policy.convert import hf_weight_specs, stream_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model
    from red_megatron.policy.parallel import init_model_parallel
    from red_megatron.rollout.refit import RefitPlan, refit

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    groups = init_model_parallel(tp=1, pp=1, seed=0)
    cfg = hf_config_dict(args.shape)
    chunks = build_model(cfg, groups=groups, dtype=dtype, options=ModelOptions(attention="sdpa"))
    sink = VllmLayoutSink(cfg, device, dtype)
    specs = hf_weight_specs(chunks)
    model_bytes = sink.nbytes()
    largest = max(t.numel() * t.element_size() for t in sink.params.values())
    meta = run_meta(shape=args.shape, dtype=str(dtype).replace("torch.", ""), model_bytes=model_bytes,
                    tensors=len(specs))
    print(json.dumps(meta), flush=True)

    roof = copy_roofline(model_bytes, device, args.repeats)
    stream_only = statistics.median(wall_times(lambda: [None for _ in stream_hf_weights(chunks, groups=groups)],
                                               args.repeats))
    res = {"meta": meta, "roofline_s": roof, "roofline_GBps": model_bytes / roof / 1e9,
           "stream_only_s": stream_only, "runs": []}

    check = None
    for b in args.buckets.split(","):
        bb = parse_bucket(b, model_bytes)
        plan = RefitPlan.build(specs, sink.expected_weights, dtype=dtype, bucket_bytes=bb,
                               tie_word_embeddings=bool(cfg.get("tie_word_embeddings")))
        if check is None:  # first refit into the NaN-filled destination: every element must land
            refit(sink, plan, stream_hf_weights(chunks, groups=groups))
            sync()
            check = sink.check_against(stream_hf_weights(chunks, groups=groups))
            res["check"] = check
            print("check", json.dumps(check), flush=True)
        base = _peak_reset()
        stats = []
        secs = wall_times(lambda: stats.append(refit(sink, plan, stream_hf_weights(chunks, groups=groups))),
                          args.repeats)
        s = statistics.median(secs)
        row = {"bucket": b, "bucket_bytes": bb, "seconds": s, "GBps": plan.total_bytes / s / 1e9,
               "x_roofline": s / roof, "buckets": stats[-1].buckets, "max_bucket_MiB": stats[-1].max_bucket_bytes / MiB,
               "peak_extra_MiB": _peak_extra(base), "bound_MiB": (stats[-1].max_bucket_bytes + largest) / MiB}
        res["runs"].append(row)
        print(json.dumps(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "refit_gpu_bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    rows_beside(os.path.join(args.out, "refit_gpu_bench.json"), res["runs"], meta, config=vars(args))
    print(f"\n{meta['device']}, {args.shape} ({model_bytes / 1e9:.2f} GB {meta['dtype']}, {len(specs)} tensors); "
          f"copy roofline {roof * 1e3:.2f} ms ({res['roofline_GBps']:.0f} GB/s); stream alone {stream_only * 1e3:.1f} ms")
    print("| bucket | buckets | seconds | GB/s | × roofline | peak extra MiB | bound MiB |\n|---|---|---|---|---|---|---|")
    for r in res["runs"]:
        pk = "–" if r["peak_extra_MiB"] is None else f"{r['peak_extra_MiB']:.0f}"
        print(f"| {r['bucket']} | {r['buckets']} | {r['seconds']:.4f} | {r['GBps']:.1f} | {r['x_roofline']:.1f} | "
              f"{pk} | {r['bound_MiB']:.0f} |")
    return res


if __name__ == "__main__":
    main()
