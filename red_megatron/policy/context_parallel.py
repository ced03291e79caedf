"""Context parallelism on torch SDPA: load-balanced sequence chunks and a K/V all-gather.

Layout (megatron's, so its THD RoPE applies unchanged): every sequence of the packed row is padded
to a multiple of 2·CP and cut into 2·CP equal chunks; CP rank r holds chunks r and 2·CP−1−r, in that
order. Under a causal mask chunk j costs j+1 chunk-pairs of work, so every rank does the same work
((r+1) + (2·CP−r) = 2·CP+1 pairs).

Attention: each rank all-gathers K and V of its CP group (one collective per layer; the backward is
the matching reduce-scatter of dK/dV), rebuilds every sequence's full K/V in sequence order, and for
each local query chunk j attends to keys [0, (j+1)·c) with the causal diagonal aligned bottom-right
(``causal_lower_right``): still one ``scaled_dot_product_attention`` call per chunk, flash/cuDNN on a GPU.

Pure torch and torch.distributed: the group is an argument. Used by ``SDPAttention`` (the model) and
by the micro-batch planner (which tokens a rank holds).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def chunk_ids(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two chunks (of 2·CP) a rank holds, in local order."""
    return cp_rank, 2 * cp_size - 1 - cp_rank


def local_positions(length: int, cp_rank: int, cp_size: int) -> torch.Tensor:
    """Positions (0..length-1) of one sequence that this CP rank holds, in local order.
    ``length`` must be a multiple of 2·CP."""
    if length % (2 * cp_size) != 0:
        raise ValueError(f"a sequence of {length} tokens cannot be split into 2·cp={2 * cp_size} equal chunks")
    c = length // (2 * cp_size)
    a, b = chunk_ids(cp_rank, cp_size)
    return torch.cat([torch.arange(a * c, (a + 1) * c), torch.arange(b * c, (b + 1) * c)])


class _GatherCP(torch.autograd.Function):
    """All-gather along dim 0 over the CP group; backward: the reduce-scatter of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        n = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)  # [CP, *x.shape]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        grad = grad.contiguous()
        if dist.get_backend(group) == "nccl":
            out = torch.empty_like(grad[0])
            dist.reduce_scatter_tensor(out, grad, group=group)
        else:  # gloo has no reduce-scatter: all-reduce, keep this rank's slice
            dist.all_reduce(grad, group=group)
            out = grad[dist.get_rank(group)].clone()
        return out, None


def gather_cp(x: torch.Tensor, group) -> torch.Tensor:
    return _GatherCP.apply(x, group)


def full_sequence(gathered: torch.Tensor, start: int, length: int, cp_size: int) -> torch.Tensor:
    """One sequence in sequence order from the CP-gathered local rows.

    gathered [CP, T_local, ...]; the sequence occupies local rows [start, start + length/CP) on every
    rank; ``length`` is its global (padded) length."""
    c = length // (2 * cp_size)
    pieces = []
    for j in range(2 * cp_size):
        owner = j if j < cp_size else 2 * cp_size - 1 - j
        half = 0 if j < cp_size else 1
        s = start + half * c
        pieces.append(gathered[owner, s:s + c])
    return torch.cat(pieces)


def cp_attention_thd(attend, query, key, value, cu_seqlens: list[int], *, cp_rank: int, cp_size: int, group):
    """Causal attention of this rank's packed THD rows under context parallelism.

    query [T_local, Hq, D], key/value [T_local, Hkv, D]; ``cu_seqlens`` the *global* boundaries
    (each length a multiple of 2·CP); ``attend(q, k, v, mask)`` takes [1, H, Lq, D] / [1, H, Lk, D].
    Returns [T_local, Hq, D].
    """
    k_all, v_all = gather_cp(key, group), gather_cp(value, group)  # [CP, T_local, Hkv, D]
    out = query.new_zeros(query.shape)
    for s, e in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        length = e - s
        if length == 0:
            continue
        if length % (2 * cp_size) != 0:
            raise ValueError(f"context parallelism: a packed sequence of {length} tokens is not padded to a "
                             f"multiple of 2·cp={2 * cp_size}")
        c, ls = length // (2 * cp_size), s // cp_size  # chunk size; the sequence's first local row
        k_seq = full_sequence(k_all, ls, length, cp_size)
        v_seq = full_sequence(v_all, ls, length, cp_size)
        out[ls:ls + 2 * c] = chunk_attention(attend, query[ls:ls + 2 * c], k_seq, v_seq, cp_rank=cp_rank,
                                             cp_size=cp_size)
    return out


def chunk_attention(attend, q_local, k_seq, v_seq, *, cp_rank: int, cp_size: int):
    """One sequence: this rank's two query chunks q_local [2c, Hq, D] against the whole sequence's
    K/V [L, Hkv, D] (L = 2·CP·c), each chunk j attending to keys [0, (j+1)·c) with the causal
    diagonal bottom-right. No collective: ``benchmarks/cp_attention_check.py`` runs it on one GPU."""
    from torch.nn.attention.bias import causal_lower_right

    c = q_local.shape[0] // 2
    out = []
    for half, j in enumerate(chunk_ids(cp_rank, cp_size)):
        q = q_local[half * c:(half + 1) * c].transpose(0, 1).unsqueeze(0)  # [1, Hq, c, D]
        kk = k_seq[:(j + 1) * c].transpose(0, 1).unsqueeze(0)
        vv = v_seq[:(j + 1) * c].transpose(0, 1).unsqueeze(0)
        out.append(attend(q, kk, vv, causal_lower_right(c, (j + 1) * c))[0].transpose(0, 1))
    return torch.cat(out)


def localize_micro_batch(mb, *, cp_rank: int, cp_size: int, tp_multiple: int = 1, pad_id: int = 0):
    """The part of a micro-batch (``batching.MicroBatch``) this rank computes.

    - context parallelism (packed layout only): every sequence padded at its end to a multiple of
      2·CP (padding comes after the real tokens, so a causal model cannot see it), this rank's two
      chunks of each kept, ``cu_seqlens`` the global padded boundaries (megatron's THD RoPE and the
      CP attention take those), and only the logit rows this rank holds, with their targets and N
      indices (every predicted token is held by exactly one CP rank);
    - ``tp_multiple`` (sequence parallelism: the TP size): the tokens a rank computes padded to a
      multiple of it (a trailing all-padding sequence in the packed layout, padding columns in the
      padded one), since megatron splits the sequence dimension over the TP ranks.
    Returns ``mb`` itself when neither applies.
    """
    from red_megatron.policy.batching import MicroBatch

    packed = mb.cu_seqlens is not None
    if cp_size == 1 and tp_multiple == 1:
        return mb
    if not packed:
        if cp_size > 1:
            raise ValueError("context parallelism needs packed micro-batches (policy.pack_sequences=true)")
        B, S = mb.tokens_BS.shape
        S_pad = -(-S // tp_multiple) * tp_multiple
        if S_pad == S:
            return mb
        tokens = torch.full((B, S_pad), pad_id, dtype=mb.tokens_BS.dtype)
        tokens[:, :S] = mb.tokens_BS
        rows = mb.logit_rows_M // S * S_pad + mb.logit_rows_M % S
        return MicroBatch(tokens_BS=tokens, position_ids_BS=torch.arange(S_pad).unsqueeze(0).expand(B, -1).contiguous(),
                          cu_seqlens=None, max_seqlen=S_pad, logit_rows_M=rows, target_M=mb.target_M,
                          token_index_M=mb.token_index_M, seq_ids=mb.seq_ids)
    cu = mb.cu_seqlens.tolist()
    tokens = mb.tokens_BS[0]
    m = 2 * cp_size if cp_size > 1 else 1
    # global row r (predicts the token after position r of the packed row) -> (target, N index)
    row_target = dict(zip(mb.logit_rows_M.tolist(), zip(mb.target_M.tolist(), mb.token_index_M.tolist())))
    pieces, positions, new_cu, rows, targets, index = [], [], [0], [], [], []
    local_start = 0
    for s, e in zip(cu[:-1], cu[1:]):
        n = e - s
        n_pad = -(-n // m) * m
        seq = torch.full((n_pad,), pad_id, dtype=tokens.dtype)
        seq[:n] = tokens[s:e]
        keep = local_positions(n_pad, cp_rank, cp_size) if cp_size > 1 else torch.arange(n_pad)
        pieces.append(seq[keep])
        positions.append(keep)
        for k, q in enumerate(keep.tolist()):
            if q < n and s + q in row_target:
                t, i = row_target[s + q]
                rows.append(local_start + k)
                targets.append(t)
                index.append(i)
        local_start += n_pad // cp_size
        new_cu.append(new_cu[-1] + n_pad)
    if local_start % tp_multiple:  # local tokens must split evenly over the TP ranks: a padding-only sequence
        c = next(c for c in range(1, tp_multiple * m + 1) if (local_start + c * m // cp_size) % tp_multiple == 0)
        n_pad = c * m  # a multiple of 2·CP, of which this rank holds n_pad / CP
        pieces.append(torch.full((n_pad // cp_size,), pad_id, dtype=tokens.dtype))
        positions.append(local_positions(n_pad, cp_rank, cp_size) if cp_size > 1 else torch.arange(n_pad))
        new_cu.append(new_cu[-1] + n_pad)
    return MicroBatch(tokens_BS=torch.cat(pieces).unsqueeze(0), position_ids_BS=torch.cat(positions).unsqueeze(0),
                      cu_seqlens=torch.tensor(new_cu, dtype=torch.int32),
                      max_seqlen=max(b - a for a, b in zip(new_cu[:-1], new_cu[1:])),
                      logit_rows_M=torch.tensor(rows, dtype=torch.long), target_M=torch.tensor(targets, dtype=torch.long),
                      token_index_M=torch.tensor(index, dtype=torch.long), seq_ids=mb.seq_ids)
