"""The experts the engine chose for every token it ran, for rollout routing replay (policy/routing_replay.py).

One format everywhere: per sample an int16 tensor ``[prompt + response tokens, num_hidden_layers, topk]``,
row t = the experts token t went through in each decoder layer; dense layers' rows and the positions the
engine never ran (the last sampled token: nothing is computed from it) hold -1. It is vLLM's own
``CompletionOutput.routed_experts`` layout ([seq_len, layer, topk]) padded to the whole sequence.

Two ways to get it:
- on a GPU, vLLM's native capture (``LLM(enable_return_routed_experts=True)``; it needs Model Runner V2):
  ``from_native`` pads its array to the format;
- on the CPU, vLLM refuses that option (Model Runner V2 needs Triton on a GPU), so ``CpuRoutingCapture``
  captures in the engine's own process (the engine is in-process, rollout/engine.py): vLLM's MoE routers
  call a capture hook with each forward's top-k ids (``BaseRouter.set_capture_fn``, the hook its native
  capture uses), and a wrapper around the model runner's ``execute_model`` cuts the step's rows per request
  (the flattened batch is the runner's ``input_batch.req_ids`` order, ``num_scheduled_tokens`` rows each).
  Prefix caching must be off (a cached prompt prefix is never run, so it would have no routing), and
  chunked prefill is off on the CPU anyway.
"""
from __future__ import annotations

from functools import partial

import torch


def pad_to_sequence(rows: torch.Tensor, seq_len: int, num_layers: int, topk: int) -> torch.Tensor:
    """``rows`` [n <= seq_len, num_layers, topk] (the tokens the engine ran, from position 0) as the format."""
    out = torch.full((seq_len, num_layers, topk), -1, dtype=torch.int16)
    n = min(int(rows.shape[0]), seq_len)
    out[:n] = rows[:n].to(torch.int16)
    return out


def from_native(routed_experts, seq_len: int, moe_layers: list[bool], topk: int) -> torch.Tensor:
    """vLLM's ``CompletionOutput.routed_experts`` ([ran tokens, layers, topk] numpy) in the one format."""
    rows = torch.as_tensor(routed_experts).to(torch.int16)
    out = pad_to_sequence(rows, seq_len, len(moe_layers), topk)
    dense = torch.tensor([not m for m in moe_layers])
    out[:, dense] = -1
    return out


class CpuRoutingCapture:
    """Lives on the in-process worker; records each request's top-k ids per routed layer while ``active``."""

    def __init__(self, worker, num_layers: int, topk: int):
        from vllm.model_executor.layers.fused_moe.layer import MoERunner
        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

        self.num_layers, self.topk = num_layers, topk
        self.active = False
        self._step: dict[int, torch.Tensor] = {}
        self._rows: dict[str, list[torch.Tensor]] = {}
        runner = worker.model_runner
        self.layer_ids = []
        for _, module in runner.get_model().named_modules():
            if not isinstance(module, MoERunner):
                continue
            if module._quant_method.is_monolithic or not isinstance(module.router, BaseRouter):
                raise ValueError(f"routing capture: MoE layer {module.layer_id} uses a kernel that routes "
                                 f"inside itself ({type(module.router).__name__}); no capture hook")
            module.router.set_capture_fn(partial(self._capture, int(module.layer_id)))
            self.layer_ids.append(int(module.layer_id))
        if not self.layer_ids:
            raise ValueError("routing capture: the engine's model has no MoE layers")
        execute = runner.execute_model

        def execute_model(scheduler_output, *args, **kwargs):
            self._step = {}
            out = execute(scheduler_output, *args, **kwargs)
            if self.active and self._step:
                self._split(list(runner.input_batch.req_ids), scheduler_output.num_scheduled_tokens)
            return out

        runner.execute_model = execute_model

    def _capture(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        if self.active:
            self._step[layer_id] = topk_ids.detach().to("cpu", torch.int16)

    def _split(self, req_ids: list[str], scheduled: dict) -> None:
        counts = [int(scheduled.get(r, 0)) for r in req_ids]
        total = sum(counts)
        rows = torch.full((total, self.num_layers, self.topk), -1, dtype=torch.int16)
        for layer, ids in self._step.items():
            if ids.shape[0] < total:
                raise RuntimeError(f"routing capture: layer {layer} routed {ids.shape[0]} tokens, the step scheduled "
                                   f"{total}")
            rows[:, layer] = ids[:total]
        start = 0
        for r, n in zip(req_ids, counts):
            if n:
                self._rows.setdefault(r, []).append(rows[start:start + n])
            start += n

    def take(self, req_id: str) -> torch.Tensor:
        """Every row recorded for ``req_id`` ([ran tokens, layers, topk]), forgotten afterwards."""
        parts = self._rows.pop(req_id, None)
        if not parts:
            raise KeyError(f"routing capture: nothing recorded for request {req_id!r}")
        return torch.cat(parts)

    def clear(self) -> None:
        self._rows.clear()


# --- functions run on the in-process worker through collective_rpc -------------------------------------
def install_on_worker(worker, num_layers: int, topk: int) -> list[int]:
    worker._red_routing = CpuRoutingCapture(worker, num_layers, topk)
    return worker._red_routing.layer_ids


def set_active_on_worker(worker, active: bool) -> None:
    cap = worker._red_routing
    cap.active = bool(active)
    if active:
        cap.clear()


def take_on_worker(worker, samples: list[tuple[str, int, int]]) -> list[torch.Tensor]:
    """The rows of each (request id as ``LLM.generate`` reports it, sample index, samples of the request)."""
    cap = worker._red_routing
    return [cap.take(internal_request_id(list(cap._rows), *s)) for s in samples]


def internal_request_id(recorded: list[str], request_id: str, index: int, n: int) -> str:
    """The engine-internal id of sample ``index`` of request ``request_id``: vLLM appends ``-<random>`` to the
    id the caller sees, and names the samples of a request with n > 1 ``<index>_<id>`` (ParentRequest)."""
    base = f"{index}_{request_id}" if n > 1 else request_id
    hits = [r for r in recorded if r == base or r.startswith(base + "-")]
    if len(hits) != 1:
        raise KeyError(f"routing capture: {len(hits)} recorded requests match sample {index} of request "
                       f"{request_id!r} (expected 1; recorded e.g. {recorded[:4]})")
    return hits[0]
