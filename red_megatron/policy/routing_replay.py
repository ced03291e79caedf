"""Rollout routing replay: the trainer's MoE layers route every token to the experts the engine chose
when it sampled it, instead of re-deciding (``algo.routing_replay='rollout'``; docs/MOE.md says why).

The routing travels in one format (rollout/routing.py): per sequence an int tensor ``[tokens, layers, topk]``,
row t = the experts token t went through in each decoder layer (all ``num_hidden_layers``; dense layers and
positions the engine never ran, e.g. the last sampled token, hold -1).

``replay(chunks, batch, routing, groups=)`` is a context manager around one pass (old log-probs or the
update) over a ``StepBatch``: it lays the routing out like each micro-batch's tokens, as megatron's router
sees them (the ``[S, B]`` hidden states flattened sequence-major; with sequence parallelism this TP rank's
``S/tp`` slice), and a forward pre-hook on each model chunk hands micro-batch i's indices to every routed
layer's replay slot. The slot (``ReplaySlot``) takes the place of megatron's ``RouterReplay`` on each router
and is called where megatron calls it, inside ``topk_routing_with_score_function``: the chosen experts are
fixed, their gate probabilities still come from this router's logits, so the router keeps its gradient.
Unlike megatron's it mixes per token: a sequence given as None (an offline trace: no engine routed it)
routes live, i.e. by the policy's own teacher-forced routing of this very pass (docs/MOE.md); the same for
padding and the last token of a sequence (nothing is computed from it). A -1 inside a sequence that has a
routing is an error, never a silent fallback to live routing.

Refused: context parallelism (each rank's chunks of a sequence are not contiguous; not implemented) and
activation recomputation (the recomputed forward would take the next micro-batch's indices).
"""
from __future__ import annotations

import contextlib

import torch

from red_megatron.policy.moe import routers

MODES = ("none", "rollout")


class ReplaySlot:
    """One router's replay: ``target`` [tokens, topk] int64 (a row of -1: route that token live), or None
    (everything live). Same call as megatron's ``RouterReplay.get_replay_topk`` (0.16 and 0.19)."""

    def __init__(self):
        self.target: torch.Tensor | None = None

    def get_replay_topk(self, scores, topk, num_groups=None, group_topk=None, default_compute_topk=None):
        live_probs, live_idx = default_compute_topk(scores, topk, num_groups=num_groups, group_topk=group_topk)
        if self.target is None:
            return live_probs, live_idx
        target = self.target
        if target.shape != live_idx.shape:
            raise RuntimeError(f"routing replay: {tuple(target.shape)} indices for a router input of "
                               f"{tuple(live_idx.shape)} (micro-batch layout mismatch)")
        idx = torch.where((target < 0).any(-1, keepdim=True), live_idx, target.to(live_idx.device))
        return scores.gather(1, idx), idx

    # megatron's Router touches these on its replay object (0.19 sets the layer number)
    layer_number = None


def install_slots(chunks) -> None:
    """Give every router a ReplaySlot instead of megatron's RouterReplay (build time, policy/model.py)."""
    for _, router in routers(chunks):
        router.router_replay = ReplaySlot()


def _layout_micro_batch(mb, seq_routing: list[torch.Tensor | None], layer_ids: list[int], topk: int
                        ) -> torch.Tensor:
    """[S·B, routed layers, topk] int64 for one micro-batch, sequence-major like megatron's router input."""
    B, S = mb.tokens_BS.shape
    out = torch.full((B, S, len(layer_ids), topk), -1, dtype=torch.long)
    cols = torch.tensor(layer_ids, dtype=torch.long)
    if mb.cu_seqlens is not None:  # packed: the sequences of seq_ids back to back in row 0, then padding
        cu = mb.cu_seqlens.tolist()
        spans = [(0, cu[j], cu[j + 1]) for j in range(len(mb.seq_ids))]
    else:  # padded: one sequence a row
        spans = [(b, 0, int(r.shape[0]) if r is not None else 0) for b, r in enumerate(seq_routing)]
    for j, (row, start, end) in enumerate(spans):
        r = seq_routing[j]
        if r is None:  # route live
            continue
        if r.shape[0] != end - start:
            raise ValueError(f"routing replay: sequence {mb.seq_ids[j]} has {end - start} tokens but its routing "
                             f"has {r.shape[0]} rows")
        picked = r[:, cols, :].long()
        missing = (picked < 0).any(dim=-1).any(dim=-1)  # [tokens]
        if bool(missing[:-1].any()):
            t = int(missing[:-1].nonzero()[0])
            raise ValueError(f"routing replay: sequence {mb.seq_ids[j]} has no recorded experts at position {t} "
                             f"of {end - start} (the engine did not run it: prefix caching on?)")
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
    layers = routers(chunks)
    if not layers:
        raise ValueError("routing replay: this model has no routed (MoE) layers")
    for chunk in chunks:
        cfg = getattr(chunk, "config", None)
        if cfg is not None and getattr(cfg, "recompute_granularity", None):
            raise ValueError("routing replay does not support activation recomputation (the recomputed forward "
                             "would take the next micro-batch's experts)")
    if not all(isinstance(r.router_replay, ReplaySlot) for _, r in layers):
        raise RuntimeError("routing replay: the routers have no ReplaySlot (model not built by policy/model.py)")
    if all(r is None for r in routing):
        yield  # nothing to replay (e.g. a step of offline traces only)
        return
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
            router.router_replay.target = idx[:, slot, :]

    handles = [_first_stage_module(c).register_forward_pre_hook(pre_hook) for c in chunks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for _, router in layers:
            router.router_replay.target = None
    if served[0] != len(per_mb):
        raise RuntimeError(f"routing replay: {served[0]} forward passes for {len(per_mb)} micro-batches")


def step_routing(mode: str, routed_experts: list, is_offline_B) -> list | None:
    """What the step's passes replay: None for ``algo.routing_replay='none'``; for 'rollout' the samples'
    routing, traces None (routed live). An online sample without routing is an error, so replay can never be
    silently off (an engine started without rollout.return_routing, a path that drops the field)."""
    if mode == "none":
        return None
    if mode != "rollout":
        raise ValueError(f"algo.routing_replay={mode!r}; expected 'none' or 'rollout'")
    offline = [bool(x) for x in is_offline_B]
    if len(routed_experts) != len(offline):
        raise ValueError(f"algo.routing_replay='rollout': the experience carries routing for {len(routed_experts)} "
                         f"of {len(offline)} samples (rollout.return_routing off, or a path that drops it)")
    missing = [i for i, (r, off) in enumerate(zip(routed_experts, offline)) if r is None and not off]
    if missing:
        raise ValueError(f"algo.routing_replay='rollout': online sample(s) {missing[:5]} have no routing")
    return [None if off else r for r, off in zip(routed_experts, offline)]


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
