"""Sequences -> micro-batches under a token budget, so padding is never computed.

The trainer hands the policy whole sequences (prompt + response token ids) and where each
response starts. The per-token tensors of the loss (kind, adv, logp_old, ...) are 1-D over the
response tokens of all sequences, flattened in sequence order ("N order", docs/KERNEL_CONTRACT.md).
This module decides which sequences share a micro-batch and, for each micro-batch, which logit
rows predict which response tokens and where those tokens sit in N order. ``MegatronPolicy.step_batch``
does it once per step: its ``StepBatch`` (sequences, plan, tensors on the device) serves both the
old-policy pass and the update.

Two layouts:
- packed (default): the micro-batch's sequences are concatenated into one row [1, T];
  ``cu_seqlens`` marks the sequence boundaries. The model runs Megatron's THD path
  (``PackedSeqParams(qkv_format='thd')``): RoPE restarts at every sequence and attention is
  block-diagonal causal, so a packed row equals the sequences run one by one. Position ids
  restart at 0 per sequence (used by learned absolute embeddings; RoPE uses cu_seqlens).
- padded: length-bucketed rows [B, S], right-padded, plain causal attention (right padding
  cannot affect earlier tokens under a causal mask). Sequences are sorted by length so rows of
  a micro-batch have similar lengths and padding stays small. A fallback for attention
  implementations without THD support.

Sequence order inside the planner is deterministic (a stable sort), so the same batch always
gives the same micro-batches: bit-exact resume depends on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass(kw_only=True)
class SequenceBatch:
    """Whole sequences and the start of each response.

    tokens[i]: int64 [L_i] prompt + response ids. Response tokens are tokens[i][prompt_lens[i]:];
    the logit at position t-1 predicts token t, so prompt_lens[i] >= 1. N = Σ_i (L_i - P_i).
    """

    tokens: list[torch.Tensor]
    prompt_lens: list[int]

    def __post_init__(self) -> None:
        if len(self.tokens) == 0:
            raise ValueError("SequenceBatch.tokens is empty: need at least one sequence")
        if len(self.tokens) != len(self.prompt_lens):
            raise ValueError(f"SequenceBatch: {len(self.tokens)} token rows but {len(self.prompt_lens)} prompt_lens")
        for i, (t, p) in enumerate(zip(self.tokens, self.prompt_lens)):
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"SequenceBatch.tokens[{i}] must be a 1-D int64/int32 tensor, got "
                                 f"{getattr(t, 'shape', type(t))} {getattr(t, 'dtype', '')}")
            if not 1 <= int(p) <= t.numel():
                raise ValueError(f"SequenceBatch.prompt_lens[{i}] must be in [1, len(tokens[{i}])={t.numel()}], got {p}")

    @property
    def lengths(self) -> list[int]:
        return [int(t.numel()) for t in self.tokens]

    @property
    def response_lens(self) -> list[int]:
        return [int(t.numel()) - int(p) for t, p in zip(self.tokens, self.prompt_lens)]

    @property
    def num_response_tokens(self) -> int:
        return sum(self.response_lens)

    def response_offsets(self) -> list[int]:
        """Start of each sequence's response tokens in N order."""
        out, acc = [], 0
        for n in self.response_lens:
            out.append(acc)
            acc += n
        return out

    def split_per_sequence(self, values_N: torch.Tensor) -> list[torch.Tensor]:
        """Cut an N-order tensor back into one piece per sequence (e.g. logp of each response)."""
        if values_N.shape[0] != self.num_response_tokens:
            raise ValueError(f"values_N has {values_N.shape[0]} rows, batch has {self.num_response_tokens} response tokens")
        return list(torch.split(values_N, self.response_lens))


@dataclass(kw_only=True)
class MicroBatch:
    """One forward pass worth of tokens.

    tokens_BS / position_ids_BS: int64 [1, T] (packed) or [B, S] (padded).
    cu_seqlens: int32 [n+1] sequence boundaries of the packed row; None in the padded layout.
    logit_rows_M: rows of the flattened batch-first logits [B*S, V] that predict a response token.
    target_M: the predicted (global vocabulary) ids.   token_index_M: their places in N order.
    target_R: int64 [B*S] the target of every logits row (target_M at logit_rows_M, 0 elsewhere).
    A micro-batch is planned on the CPU; ``to(device)`` (done once a step, ``StepBatch``) moves it.
    """

    tokens_BS: torch.Tensor
    position_ids_BS: torch.Tensor
    cu_seqlens: torch.Tensor | None
    max_seqlen: int
    logit_rows_M: torch.Tensor
    target_M: torch.Tensor
    token_index_M: torch.Tensor
    seq_ids: list[int]
    target_R: torch.Tensor | None = None  # filled by ``to`` (StepBatch) when not given

    @property
    def num_tokens(self) -> int:
        """Tokens the model computes (packed: exact; padded: including padding)."""
        return int(self.tokens_BS.numel())

    def to(self, device) -> "MicroBatch":
        """This micro-batch with every tensor on ``device`` and target_R filled in."""
        mb = self
        if mb.target_R is None:
            target_R = torch.zeros(mb.tokens_BS.numel(), dtype=torch.long)
            target_R[mb.logit_rows_M] = mb.target_M
            mb = dataclasses.replace(mb, target_R=target_R)
        return dataclasses.replace(mb, **{f.name: getattr(mb, f.name).to(device) for f in dataclasses.fields(mb)
                                          if isinstance(getattr(mb, f.name), torch.Tensor)})


@dataclass(frozen=True)
class StepBatch:
    """One step's batch, built once (``MegatronPolicy.step_batch``): the sequences, this rank's
    micro-batch plan and the micro-batches' tensors on the device. The old-policy pass and the
    update both run on it."""

    sequences: SequenceBatch
    micro_batches: tuple[MicroBatch, ...]

    @property
    def num_tokens(self) -> int:
        """N: response tokens of the step (the length of every per-token tensor)."""
        return self.sequences.num_response_tokens




def _bins_first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        for b, load in enumerate(loads):
            if load + lengths[i] <= budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return [sorted(b) for b in bins]


def _bins_padded(lengths: list[int], budget: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    for i in order:  # lengths descend, so a row's max length is its first member's
        if bins and (len(bins[-1]) + 1) * lengths[bins[-1][0]] <= budget:
            bins[-1].append(i)
        else:
            bins.append([i])
    return bins


def plan_micro_batches(batch: SequenceBatch, *, max_tokens: int, pack: bool = True,
                       pad_id: int = 0) -> list[MicroBatch]:
    """Group ``batch`` into micro-batches of at most ``max_tokens`` computed tokens each."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    lengths = batch.lengths
    for i, n in enumerate(lengths):
        if n > max_tokens:
            raise ValueError(f"sequence {i} has {n} tokens > the micro-batch token budget {max_tokens}; "
                             f"raise PolicyConfig.micro_batch_tokens or truncate the sequence")
    offsets = batch.response_offsets()
    bins = _bins_first_fit_decreasing(lengths, max_tokens) if pack else _bins_padded(lengths, max_tokens)
    return [_build(batch, ids, offsets, pack=pack, pad_id=pad_id) for ids in bins]


def _build(batch: SequenceBatch, ids: list[int], offsets: list[int], *, pack: bool, pad_id: int) -> MicroBatch:
    rows, targets, index = [], [], []
    if pack:
        pieces, positions, cu = [], [], [0]
        for i in ids:
            t, p, n = batch.tokens[i].long(), int(batch.prompt_lens[i]), batch.tokens[i].numel()
            start = cu[-1]
            pieces.append(t)
            positions.append(torch.arange(n, dtype=torch.long))
            rows.append(torch.arange(start + p - 1, start + n - 1))
            targets.append(t[p:])
            index.append(torch.arange(offsets[i], offsets[i] + n - p))
            cu.append(start + n)
        tokens = torch.cat(pieces).unsqueeze(0)
        pos = torch.cat(positions).unsqueeze(0)
        cu_seqlens = torch.tensor(cu, dtype=torch.int32)
        max_seqlen = max(batch.tokens[i].numel() for i in ids)
    else:
        max_seqlen = max(batch.tokens[i].numel() for i in ids)
        tokens = torch.full((len(ids), max_seqlen), pad_id, dtype=torch.long)
        for r, i in enumerate(ids):
            t, p, n = batch.tokens[i].long(), int(batch.prompt_lens[i]), batch.tokens[i].numel()
            tokens[r, :n] = t
            rows.append(torch.arange(r * max_seqlen + p - 1, r * max_seqlen + n - 1))
            targets.append(t[p:])
            index.append(torch.arange(offsets[i], offsets[i] + n - p))
        pos = torch.arange(max_seqlen, dtype=torch.long).unsqueeze(0).expand(len(ids), -1).contiguous()
        cu_seqlens = None
    return MicroBatch(tokens_BS=tokens, position_ids_BS=pos, cu_seqlens=cu_seqlens, max_seqlen=int(max_seqlen),
                      logit_rows_M=torch.cat(rows).long(), target_M=torch.cat(targets).long(),
                      token_index_M=torch.cat(index).long(), seq_ids=list(ids))


def pad_packed(mb: MicroBatch | None, length: int, pad_id: int = 0) -> MicroBatch:
    """``mb`` (packed layout) with a trailing padding-only sequence up to ``length`` tokens; ``None`` gives a
    micro-batch of padding only. Padding predicts nothing (no logit rows), so it changes no loss or log-prob:
    it only gives expert-parallel peers equal shapes (policy.py, ``MegatronPolicy.micro_batches``)."""
    if mb is None:
        empty = torch.empty(0, dtype=torch.long)
        mb = MicroBatch(tokens_BS=torch.empty(1, 0, dtype=torch.long), position_ids_BS=torch.empty(1, 0, dtype=torch.long),
                        cu_seqlens=torch.zeros(1, dtype=torch.int32), max_seqlen=0, logit_rows_M=empty,
                        target_M=empty, token_index_M=empty, seq_ids=[])
    if mb.cu_seqlens is None:
        raise ValueError("pad_packed: the micro-batch is not packed (expert parallelism needs policy.pack_sequences)")
    n = int(mb.tokens_BS.shape[1])
    if n > length:
        raise ValueError(f"pad_packed: the micro-batch has {n} tokens > {length}")
    if n == length:
        return mb
    extra = length - n
    return dataclasses.replace(
        mb, tokens_BS=torch.cat([mb.tokens_BS, torch.full((1, extra), pad_id, dtype=mb.tokens_BS.dtype)], dim=1),
        position_ids_BS=torch.cat([mb.position_ids_BS, torch.arange(extra, dtype=torch.long).unsqueeze(0)], dim=1),
        cu_seqlens=torch.cat([mb.cu_seqlens, torch.tensor([length], dtype=mb.cu_seqlens.dtype)]),
        max_seqlen=max(int(mb.max_seqlen), extra), target_R=None)
