"""Activation memory per rank under TP, sequence parallelism and context parallelism (CPU, gloo).

Counts the bytes autograd saves for the backward (unique storages, parameters excluded; the same
account as ``policy_throughput.py --saved-bytes``) on rank 0 of a 2-process world, for one packed
THD sequence of T tokens through 1- and 2-layer models of a shape, and reports bytes per layer per
*global* token: what a layout divides. Layouts: TP=1, TP=2, TP=2 with SP, CP=2.

    python benchmarks/activation_memory.py [--shape 1.5b] [--tokens 1024] [--report]

Kernels differ by device (CPU composites save more than fused GPU kernels), so absolute numbers
are an upper bound for the GPU; the ratios between layouts are what the projection uses.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_util puts the repository root on sys.path

from bench_util import autograd_saved_bytes  # noqa: E402

# hidden, layers (unused: 1 and 2 are built), heads, kv heads, ffn; a small vocabulary (it does not
# enter the per-layer count)
SHAPES = {"1.5b": (1536, 12, 2, 8960), "7b": (3584, 28, 4, 18944), "tiny": (256, 4, 2, 512)}
LAYOUTS = {"tp1": dict(tp=1, cp=1, sp=False), "tp2": dict(tp=2, cp=1, sp=False),
           "tp2_sp": dict(tp=2, cp=1, sp=True), "cp2": dict(tp=1, cp=2, sp=False)}


def _hf(shape: str, layers: int) -> dict:
    h, nh, kv, f = SHAPES[shape]
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h, "num_hidden_layers": layers,
            "num_attention_heads": nh, "num_key_value_heads": kv, "intermediate_size": f, "vocab_size": 2048,
            "tie_word_embeddings": False, "rms_norm_eps": 1e-6, "rope_theta": 1e6, "max_position_embeddings": 65536,
            "hidden_act": "silu", "use_sliding_window": False, "attention_dropout": 0.0}


def _saved_bytes(groups, shape: str, layers: int, T: int, sp: bool) -> int:
    from megatron.core.packed_seq_params import PackedSeqParams

    from red_megatron.policy.context_parallel import local_positions
    from red_megatron.policy.model import ModelOptions, build_model

    model = build_model(_hf(shape, layers), groups=groups, dtype=torch.bfloat16,
                        options=ModelOptions(attention="sdpa", sequence_parallel=sp))[0]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 2048, (T,), generator=g)
    keep = local_positions(T, groups.cp_rank, groups.cp_size) if groups.cp_size > 1 else torch.arange(T)
    cu = torch.tensor([0, T], dtype=torch.int32)
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                          cu_seqlens_kv_padded=cu, max_seqlen_q=T, max_seqlen_kv=T)
    return autograd_saved_bytes(lambda: model(tokens[keep].unsqueeze(0), keep.unsqueeze(0), attention_mask=None,
                                              packed_seq_params=psp))


def _worker(rank: int, world: int, port: int, shape: str, T: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from red_megatron.policy.parallel import destroy_model_parallel, init_model_parallel

    rows = []
    for name, lay in LAYOUTS.items():
        groups = init_model_parallel(tp=lay["tp"], cp=lay["cp"], seed=0)
        one = _saved_bytes(groups, shape, 1, T, lay["sp"])
        two = _saved_bytes(groups, shape, 2, T, lay["sp"])
        destroy_model_parallel()
        rows.append({"layout": name, **lay, "per_layer_per_token": (two - one) / T,
                     "outside_layers_per_token": (2 * one - two) / T})
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def measure(shape: str = "1.5b", tokens: int = 1024) -> list[dict]:
    """One row per layout: bytes autograd saves per layer per global token on rank 0."""
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        mp.start_processes(_worker, args=(2, port, shape, tokens, out), nprocs=2, join=True, start_method="spawn")
        rows = json.loads(Path(out).read_text())
    base = rows[0]["per_layer_per_token"]
    for r in rows:
        r["vs_tp1"] = r["per_layer_per_token"] / base
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="1.5b", choices=sorted(SHAPES))
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--report", action="store_true", help="write benchmarks/reports/activation_memory_<date>.{json,md}")
    args = ap.parse_args(argv)
    rows = measure(args.shape, args.tokens)
    day = datetime.date.today().isoformat()
    lines = [f"# Activation memory per rank: TP, SP, CP ({day}, CPU, 2 gloo ranks, bf16)", "",
             f"Shape {args.shape} (hidden {SHAPES[args.shape][0]}), one packed sequence of {args.tokens} tokens; "
             f"bytes autograd saves per layer per global token on rank 0 (benchmarks/activation_memory.py).", "",
             "| layout | per layer per token (bytes) | vs TP=1 | outside layers per token |", "|---|---:|---:|---:|"]
    lines += [f"| {r['layout']} | {r['per_layer_per_token']:,.0f} | {r['vs_tp1']:.3f} | "
              f"{r['outside_layers_per_token']:,.0f} |" for r in rows]
    print("\n".join(lines))
    if args.report:
        rep = Path(__file__).resolve().parent / "reports"
        (rep / f"activation_memory_{day}.json").write_text(json.dumps({"shape": args.shape, "tokens": args.tokens,
                                                                       "rows": rows}, indent=1))
        (rep / f"activation_memory_{day}.md").write_text("\n".join(lines) + "\n")
        from bench_util import rows_beside, run_meta

        rows_beside(rep / f"activation_memory_{day}.json", rows, run_meta(benchmark="activation_memory"),
                    config={"shape": args.shape, "tokens": args.tokens})
    return 0


if __name__ == "__main__":
    sys.exit(main())
