"""Group assembly (RED_SPEC step 1): G online samples + the prompt's offline trace.

Every sample carries its prompt's group id and an explicit ``is_offline`` flag, and every
token inherits both from its sample. Nothing downstream infers "offline" from a position
in the batch: the authors' code did, after a shuffle, and applied w to random samples.
So the batch may be shuffled, packed or split across ranks freely; the flags travel with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class GroupedBatch:
    """B samples (responses only), flattened group by group in assembly order.

    responses: B token-id lists (the trace already truncated and EOS-terminated).
    group_id_B: int64, the prompt index of each sample (0 .. num_groups-1).
    is_offline_B: bool, True for the offline trace.
    response_len_B: int64, len(responses[i]).
    """

    responses: list[list[int]]
    group_id_B: torch.Tensor
    is_offline_B: torch.Tensor
    response_len_B: torch.Tensor

    @property
    def num_groups(self) -> int:
        return int(self.group_id_B.max().item()) + 1 if self.group_id_B.numel() else 0

    def permute(self, perm_B: torch.Tensor) -> "GroupedBatch":
        """The same batch with samples reordered; flags and ids move with their samples."""
        idx = perm_B.tolist()
        return GroupedBatch(
            responses=[self.responses[i] for i in idx],
            group_id_B=self.group_id_B[perm_B],
            is_offline_B=self.is_offline_B[perm_B],
            response_len_B=self.response_len_B[perm_B],
        )


def prepare_offline_trace(trace: Sequence[int], *, max_response_len: int, eos_token_id: int) -> list[int]:
    """Truncate a trace to the response limit with EOS as its last token (RED_SPEC step 1)."""
    if max_response_len < 1:
        raise ValueError(f"max_response_len must be >= 1, got {max_response_len}")
    body = [int(t) for t in trace]
    if body and body[-1] == eos_token_id:
        body = body[:-1]
    return body[: max_response_len - 1] + [int(eos_token_id)]


def assemble_groups(
    online: Sequence[Sequence[Sequence[int]]],
    offline: Sequence[Sequence[int]] | None,
    *,
    max_response_len: int,
    eos_token_id: int,
) -> GroupedBatch:
    """Build the G+1-member groups of one step.

    online[p] holds prompt p's G online responses (token ids, as sampled); offline[p] its
    trace (None: no offline member, the grpo preset). Every prompt must have the same G.
    """
    num_prompts = len(online)
    if offline is not None and len(offline) != num_prompts:
        raise ValueError(f"offline has {len(offline)} traces for {num_prompts} prompts; expected one per prompt")
    sizes = {len(o) for o in online}
    if len(sizes) > 1:
        raise ValueError(f"every prompt needs the same number G of online samples; got sizes {sorted(sizes)}")
    responses: list[list[int]] = []
    group_ids: list[int] = []
    flags: list[bool] = []
    for p in range(num_prompts):
        for resp in online[p]:
            responses.append([int(t) for t in resp])
            group_ids.append(p)
            flags.append(False)
        if offline is not None:
            responses.append(prepare_offline_trace(offline[p], max_response_len=max_response_len, eos_token_id=eos_token_id))
            group_ids.append(p)
            flags.append(True)
    return GroupedBatch(
        responses=responses,
        group_id_B=torch.tensor(group_ids, dtype=torch.long),
        is_offline_B=torch.tensor(flags, dtype=torch.bool),
        response_len_B=torch.tensor([len(r) for r in responses], dtype=torch.long),
    )


def group_layout(num_prompts: int, num_online: int, *, with_offline: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(group_id_B, is_offline_B) for the canonical layout of num_prompts groups of G (+1)."""
    if num_prompts < 1 or num_online < 0:
        raise ValueError(f"need num_prompts >= 1 and num_online >= 0, got {num_prompts}, {num_online}")
    per = num_online + int(with_offline)
    if per < 1:
        raise ValueError("a group needs at least one member (num_online=0 requires with_offline=True)")
    group_id_B = torch.arange(num_prompts).repeat_interleave(per)
    is_offline_B = torch.zeros(per, dtype=torch.bool)
    if with_offline:
        is_offline_B[-1] = True
    return group_id_B, is_offline_B.repeat(num_prompts)


def check_groups(group_id_B: torch.Tensor, is_offline_B: torch.Tensor, *, max_offline_per_group: int = 1) -> int:
    """Validate per-sample group tensors; return the number of groups.

    Group ids must be 0..num_groups-1 (each present), at most one offline sample per group.
    """
    if group_id_B.dim() != 1 or is_offline_B.shape != group_id_B.shape:
        raise ValueError(
            f"group_id_B and is_offline_B must be 1-D of equal length; got {tuple(group_id_B.shape)}, {tuple(is_offline_B.shape)}"
        )
    if is_offline_B.dtype != torch.bool:
        raise ValueError(f"is_offline_B must be torch.bool, got {is_offline_B.dtype}")
    if group_id_B.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"group_id_B must be an integer tensor, got {group_id_B.dtype}")
    if group_id_B.numel() == 0:
        raise ValueError("empty batch: group_id_B has no samples")
    if int(group_id_B.min()) < 0:
        raise ValueError(f"group_id_B has a negative id {int(group_id_B.min())}")
    num_groups = int(group_id_B.max()) + 1
    counts = torch.bincount(group_id_B.long(), minlength=num_groups)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()[:5]
        raise ValueError(f"group ids must be contiguous 0..{num_groups - 1}; groups {missing} have no samples")
    n_off = torch.bincount(group_id_B.long()[is_offline_B], minlength=num_groups)
    if bool((n_off > max_offline_per_group).any()):
        g = int(torch.nonzero(n_off > max_offline_per_group)[0])
        raise ValueError(f"group {g} has {int(n_off[g])} offline samples; at most {max_offline_per_group} allowed")
    return num_groups


def sample_index_of_tokens(response_len_B: torch.Tensor) -> torch.Tensor:
    """sample_idx_N: for each response token (flattened sample by sample) its sample index."""
    if response_len_B.dim() != 1 or bool((response_len_B < 0).any()):
        raise ValueError("response_len_B must be a 1-D tensor of non-negative lengths")
    return torch.arange(response_len_B.numel(), device=response_len_B.device).repeat_interleave(response_len_B.long())


def per_token(values_B: torch.Tensor, response_len_B: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample value to every token of that sample (e.g. Â_i, is_offline_i)."""
    if values_B.shape[0] != response_len_B.shape[0]:
        raise ValueError(f"values_B has {values_B.shape[0]} samples, response_len_B {response_len_B.shape[0]}")
    return values_B.repeat_interleave(response_len_B.long(), dim=0)
