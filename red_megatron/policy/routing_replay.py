"""Rollout routing replay: the trainer's MoE layers route every token to the experts the engine chose
when it sampled it, instead of re-deciding (``algo.routing_replay='rollout'``; docs/MOE.md says why).

The routing travels in one format (rollout/routing.py): per sequence an int tensor ``[tokens, layers, topk]``,
row t = the experts token t went through in each decoder layer (all ``num_hidden_layers``; dense layers and
positions the engine never ran, e.g. the last sampled token, hold -1).

``replay(chunks, batch, routing, groups=)`` is a context manager around one pass (old log-probs or the
update) over a ``StepBatch``: it lays the routing out like each micro-batch's tokens, as megatron's router
sees them (the ``[S, B]`` hidden states flattened sequence-major; with sequence parallelism this TP rank's
``S/tp`` slice), and a forward pre-hook on each model chunk hands micro-batch i's indices to every routed
layer's ``RouterReplay`` (megatron's own replay hook inside ``topk_routing_with_score_function``: the
chosen experts are fixed, their gate probabilities still come from this router's logits, so the router
keeps its gradient). Positions holding -1 where the result is unused (the last token of a sequence, padding)
get experts 0..k-1; a -1 anywhere else is an error, never a silent fallback to live routing.

Refused: context parallelism (each rank's chunks of a sequence are not contiguous; not implemented) and
activation recomputation (the recomputed forward would take the next micro-batch's indices).
"""
from __future__ import annotations

import contextlib

import torch

from red_megatron.policy.moe import routers

MODES = ("none", "rollout")


def _layout_micro_batch(mb, seq_routing: list[torch.Tensor], layer_ids: list[int], topk: int) -> torch.Tensor:
    """[S·B, routed layers, topk] int64 for one micro-batch, sequence-major like megatron's router input."""
    B, S = mb.tokens_BS.shape
    filler = torch.arange(topk, dtype=torch.long)
    out = filler.expand(B, S, len(layer_ids), topk).clone()
    cols = torch.tensor(layer_ids, dtype=torch.long)
    if mb.cu_seqlens is not None:  # packed: the sequences of seq_ids back to back in row 0, then padding
        cu = mb.cu_seqlens.tolist()
        spans = [(0, cu[j], cu[j + 1]) for j in range(len(mb.seq_ids))]
    else:  # padded: one sequence a row
        spans = [(b, 0, int(seq_routing[b].shape[0])) for b in range(len(mb.seq_ids))]
    for j, (row, start, end) in enumerate(spans):
        r = seq_routing[j]
        if r.shape[0] != end - start:
            raise ValueError(f"routing replay: sequence {mb.seq_ids[j]} has {end - start} tokens but its routing "
                             f"has {r.shape[0]} rows")
        picked = r[:, cols, :].long()
        missing = (picked < 0).any(dim=-1).any(dim=-1)  # [tokens]
        if bool(missing[:-1].any()):
            t = int(missing[:-1].nonzero()[0])
            raise ValueError(f"routing replay: sequence {mb.seq_ids[j]} has no recorded experts at position {t} "
                             f"of {end - start} (the engine did not run it: prefix caching on?)")
        picked[missing] = filler
        out[row, start:end] = picked
    return out.transpose(0, 1).reshape(S * B, len(layer_ids), topk)


def micro_batch_routing(batch, routing: list[torch.Tensor], *, layer_ids: list[int], topk: int,
                        groups, sequence_parallel: bool) -> list[torch.Tensor]:
    """Per micro-batch of ``batch`` (a StepBatch), the indices this rank's routers replay."""
    if groups.cp_size > 1:
        raise ValueError("routing replay is not implemented with context parallelism (policy.cp > 1)")
    if len(routing) != len(batch.sequences.tokens):
        raise ValueError(f"routing replay: {len(routing)} routings for {len(batch.sequences.tokens)} sequences")
    out = []
    for mb in batch.micro_batches:
        full = _layout_micro_batch(mb.to("cpu"), [routing[i] for i in mb.seq_ids], layer_ids, topk)
        if sequence_parallel and groups.tp_size > 1:  # megatron's router sees this TP rank's slice of the sequence dimension
            n = full.shape[0] // groups.tp_size
            full = full[groups.tp_rank * n:(groups.tp_rank + 1) * n]
        out.append(full.to(groups.device))
    return out


@contextlib.contextmanager
def replay(chunks, batch, routing: list[torch.Tensor] | None, *, groups, sequence_parallel: bool):
    """Replay ``routing`` (per sequence of ``batch``, or None: live routing) in the passes run inside."""
    if routing is None:
        yield
        return
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    layers = routers(chunks)
    if not layers:
        raise ValueError("routing replay: this model has no routed (MoE) layers")
    for chunk in chunks:
        cfg = getattr(chunk, "config", None)
        if cfg is not None and getattr(cfg, "recompute_granularity", None):
            raise ValueError("routing replay does not support activation recomputation (the recomputed forward "
                             "would take the next micro-batch's experts)")
    topk = layers[0][1].topk
    layer_ids = [i for i, _ in layers]
    per_mb = micro_batch_routing(batch, routing, layer_ids=layer_ids, topk=topk, groups=groups,
                                 sequence_parallel=sequence_parallel)
    queue = iter(per_mb)
    served = [0]

    def pre_hook(_module, _args, _kwargs=None):
        try:
            idx = next(queue)
        except StopIteration:
            raise RuntimeError("routing replay: more forward passes than micro-batches") from None
        served[0] += 1
        for slot, (_, router) in enumerate(layers):
            rr = router.router_replay
            rr.clear_indices()
            rr.set_target_indices(idx[:, slot, :])
            rr.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)

    handles = [_first_stage_module(c).register_forward_pre_hook(pre_hook) for c in chunks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for _, router in layers:
            router.router_replay.clear_indices()
            router.router_replay.clear_router_replay_action()
    if served[0] != len(per_mb):
        raise RuntimeError(f"routing replay: {served[0]} forward passes for {len(per_mb)} micro-batches")


def _first_stage_module(chunk):
    """The GPTModel inside DDP wrappers: its forward runs once per micro-batch."""
    m = chunk
    while hasattr(m, "module") and not hasattr(m, "decoder"):
        m = m.module
    return m


def record(chunks):
    """Context manager: the routing megatron's routers choose live in the passes run inside, per forward,
    as lists of [tokens, topk] per routed layer (for tests and the offline-trace choice)."""
    return _Recorder(chunks)


class _Recorder:
    def __init__(self, chunks):
        self.layers = routers(chunks)
        self.forwards: list[list[torch.Tensor]] = []
        self._handles = []

    def __enter__(self):
        for slot, (_, router) in enumerate(self.layers):
            self._handles.append(router.register_forward_hook(self._hook(slot)))
        return self

    def _hook(self, slot):
        def hook(_m, _i, output):
            routing_map = output[1]  # [tokens, experts] bool
            idx = routing_map.to(torch.int8).topk(int(routing_map.sum(-1).max()), dim=-1).indices.sort(-1).values
            if slot == 0:
                self.forwards.append([])
            self.forwards[-1].append(idx.cpu())
        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
