"""Workers for the context/sequence-parallel parity tests (run on the dist2 pool)."""
from __future__ import annotations

import torch


def _packed(lengths, seed=0, vocab=1000):
    g = torch.Generator().manual_seed(seed)
    toks = [torch.randint(3, vocab, (n,), generator=g) for n in lengths]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return toks, torch.tensor(cu, dtype=torch.int32)


def model_cp_worker(ckpt: str, cp: int, lengths: list[int], tp: int = 1, sequence_parallel: bool = False):
    """Logits of a packed row (each length a multiple of 2·cp) and the gradient of a fixed linear
    function of them, at context parallelism ``cp``: returns full-row logits (this rank's rows filled,
    others zero) and the parameter grads summed over the CP group."""
    import torch.distributed as dist
    from megatron.core.packed_seq_params import PackedSeqParams

    from red_megatron.policy.context_parallel import local_positions
    from red_megatron.policy.convert import load_hf_weights
    from red_megatron.policy.model import ModelOptions, build_model
    from tests.dist_pool import megatron_parallel

    toks, cu = _packed(lengths)
    T = int(cu[-1])
    with megatron_parallel(tp=tp, cp=cp) as groups:
        chunks = build_model(ckpt, groups=groups, dtype=torch.float32,
                             options=ModelOptions(attention="sdpa", sequence_parallel=sequence_parallel))
        load_hf_weights(chunks, ckpt, groups=groups)
        model = chunks[0]
        rows = torch.cat([int(cu[i]) + local_positions(n, groups.cp_rank, cp) for i, n in enumerate(lengths)])
        full_tokens = torch.cat(toks)
        positions = torch.cat([torch.arange(n) for n in lengths])
        psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                              cu_seqlens_kv_padded=cu, max_seqlen_q=max(lengths), max_seqlen_kv=max(lengths))
        out = model(full_tokens[rows].unsqueeze(0), positions[rows].unsqueeze(0), attention_mask=None,
                    packed_seq_params=psp)  # [1, T_local, V/tp]
        logits = out[0]
        g = torch.Generator().manual_seed(7)
        V_local = logits.shape[-1]
        W = torch.randn(T, V_local * groups.tp_size, generator=g)[:, groups.tp_rank * V_local:(groups.tp_rank + 1) * V_local]
        (logits * W[rows]).sum().backward()
        full = torch.zeros(T, V_local)
        full[rows] = logits.detach()
        grads = {}
        for name, p in model.named_parameters():
            gr = p.grad.detach().clone()
            if cp > 1:
                dist.all_reduce(gr, group=groups.cp_group)
            if sequence_parallel and getattr(p, "sequence_parallel", False):
                dist.all_reduce(gr, group=groups.tp_group)  # what finalize_model_grads does
            grads[name] = gr
        if cp > 1:
            dist.all_reduce(full, group=groups.cp_group)
    return {"logits": full, "grads": grads}


def policy_cp_worker(hf_dir: str, cp: int, tp: int = 1):
    """The policy's passes at context parallelism ``cp``: per-token log-probs and entropies of a batch of
    uneven sequences (none a multiple of 2·cp), then one RED update: (logp, entropy, loss, grad norm)."""
    from red_megatron.algo.contract import LossParams
    from tests.dist_pool import megatron_parallel
    from tests.policy_helpers import fixed_batch, hf_policy, red_terms

    with megatron_parallel(tp=tp, cp=cp, seed=5):
        pol = hf_policy(hf_dir, tp=tp, cp=cp, loss=LossParams(temperature=0.9), micro_batch_tokens=48,
                        sequence_parallel=False)
        tokens, prompts = fixed_batch()
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        batch = pol.step_batch(tokens, prompts)
        logp, ent = pol.logprobs_and_entropy(batch)
        terms = red_terms(n, seed=3)
        terms["weight_N"] = terms["weight_N"] / pol.groups.dp_size  # the DP replicas see the same batch
        out = pol.train_step(batch, terms=terms, logp_old_N=logp - 0.01)
    return {"logp": logp, "entropy": ent, "loss": out["loss"], "grad_norm": out["grad_norm"],
            "micro_batches": out.get("micro_batches")}
