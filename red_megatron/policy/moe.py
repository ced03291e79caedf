"""Mixture-of-experts layers for Qwen3-MoE checkpoints: megatron-core's MoE, configured for RL.

What makes megatron-core's MoE layer compute what transformers' ``Qwen3MoeSparseMoeBlock`` computes:
- the router is a bias-free linear to ``num_experts`` logits, softmax score function;
- ``norm_topk_prob=True``: top-k on the logits, then a softmax over the k chosen logits (megatron's
  ``moe_router_pre_softmax=False``), which equals HF's softmax over all experts renormalised over the top k;
  ``norm_topk_prob=False``: softmax over all experts, then top-k (``moe_router_pre_softmax=True``);
- each expert is a SwiGLU MLP of ``moe_intermediate_size`` (``SequentialMLP`` of ``linear_fc1`` / ``linear_fc2``;
  megatron's grouped GEMM needs transformer-engine or grouped_gemm kernels, used on the GPU when importable);
- dense layers (``mlp_only_layers`` / ``decoder_sparse_step``) keep the dense spec with ``intermediate_size``:
  one layer spec per layer, the block built from this pipeline stage's slice.

RL settings (docs/MOE.md has the reasons): the router's logits and top-k in fp32
(``moe_router_dtype='fp32'``) and the load-balancing auxiliary loss off unless ``aux_loss_coeff > 0``.
Every router carries the project's replay slot (``policy/routing_replay.py``) where megatron would hold its
``RouterReplay`` (whose class-wide list of instances would mix several models of one process).

Token dispatch: "allgather" on the CPU (gloo: the "alltoall" dispatcher's ``all_to_all_single`` call with
split sizes fails there), "alltoall" with CUDA. Expert-tensor parallelism equals the policy's TP.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from red_megatron.hf.config import HFModelConfig

DISPATCHERS = ("auto", "allgather", "alltoall")


@dataclass(kw_only=True)
class MoEOptions:
    """How the routed layers train (ignored for a dense checkpoint).

    aux_loss_coeff: megatron's load-balancing auxiliary loss coefficient; 0 (the RL default) turns it off.
    router_fp32: router logits, softmax and top-k in fp32 whatever the parameter dtype.
    dispatcher: megatron's token dispatcher ("auto": alltoall with CUDA, allgather on the CPU).
    """

    aux_loss_coeff: float = 0.0
    router_fp32: bool = True
    dispatcher: str = "auto"

    def __post_init__(self) -> None:
        if not self.aux_loss_coeff >= 0:
            raise ValueError(f"MoEOptions.aux_loss_coeff must be >= 0 (0: off), got {self.aux_loss_coeff!r}")
        if self.dispatcher not in DISPATCHERS:
            raise ValueError(f"MoEOptions.dispatcher must be one of {DISPATCHERS}, got {self.dispatcher!r}")
        if self.dispatcher == "alltoall" and not torch.cuda.is_available():
            raise ValueError("MoEOptions.dispatcher='alltoall' needs CUDA (gloo's all_to_all_single with split "
                             "sizes fails in megatron's alltoall dispatcher); use 'allgather' on the CPU")


def moe_config_kwargs(hf: HFModelConfig, *, ep: int, moe: MoEOptions | None) -> dict:
    """TransformerConfig fields for ``hf``'s routed layers ({} for a dense model)."""
    if not hf.is_moe:
        return {}
    moe = moe or MoEOptions()
    hf.check_ep(ep)
    dispatcher = moe.dispatcher if moe.dispatcher != "auto" else (
        "alltoall" if torch.cuda.is_available() else "allgather")
    aux = moe.aux_loss_coeff > 0
    return dict(
        num_moe_experts=hf.num_experts, moe_router_topk=hf.moe_top_k, moe_ffn_hidden_size=hf.moe_intermediate_size,
        moe_layer_freq=[1 if m else 0 for m in hf.moe_layers], moe_router_score_function="softmax",
        moe_router_pre_softmax=not hf.norm_topk_prob, moe_router_dtype="fp32" if moe.router_fp32 else None,
        moe_router_load_balancing_type="aux_loss" if aux else "none", moe_aux_loss_coeff=moe.aux_loss_coeff,
        moe_token_dispatcher_type=dispatcher, moe_grouped_gemm=False, moe_permute_fusion=False,
        moe_router_fusion=False, expert_model_parallel_size=ep,
    )


def decoder_block_spec(hf: HFModelConfig, dense_spec, *, first_layer: int, num_layers: int, layer_norm,
                       qk_layernorm: bool):
    """The block spec of this pipeline stage: ``dense_spec`` for dense layers, megatron's local MoE spec
    (with the same attention and norms as ``dense_spec``) for routed ones."""
    import copy

    from megatron.core.models.gpt import gpt_layer_specs as specs
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    moe_spec = specs.get_gpt_layer_local_spec(num_experts=hf.num_experts, moe_grouped_gemm=False,
                                              qk_layernorm=qk_layernorm, normalization="RMSNorm")
    moe_spec = copy.copy(moe_spec)
    moe_spec.submodules = copy.copy(moe_spec.submodules)
    for name in ("self_attention", "input_layernorm", "pre_mlp_layernorm"):  # attention and norms as dense
        setattr(moe_spec.submodules, name, getattr(dense_spec.submodules, name))
    layers = [moe_spec if hf.moe_layers[i] else dense_spec for i in range(first_layer, first_layer + num_layers)]
    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=layer_norm)


def routers(chunks) -> list:
    """(global layer index, TopKRouter) of every routed layer in these chunks, in layer order."""
    out = []
    for chunk in chunks:
        model = getattr(chunk, "module", chunk)
        while hasattr(model, "module") and not hasattr(model, "decoder"):
            model = model.module
        decoder = getattr(model, "decoder", None)
        if decoder is None:
            continue
        for layer in decoder.layers:
            router = getattr(getattr(layer, "mlp", None), "router", None)
            if router is not None:
                out.append((layer.layer_number - 1, router))
    return out


class ExpertLoad:
    """Tokens routed to each expert of each routed layer, counted by forward hooks on the routers.

    ``with ExpertLoad(chunks) as load: <passes>``, then ``load.reduce(groups, ...).metrics()``: per layer
    ``max/mean`` of the tokens per expert (1.0 = perfectly balanced) and the mean tokens an expert got, the
    overall maximum, and the switch load-balancing loss megatron's aux loss would add, over the step's tokens
    (``moe/balance_loss``: E/(k·T²)·Σ_e tokens_e·Σ_t p_te summed over layers, 1.0 per layer when balanced;
    ``moe/aux_loss`` = coeff × that when the auxiliary loss is on). It is a metric: the RED loss
    (optim/loss) never includes it; megatron adds the auxiliary loss's gradient in the backward itself."""

    def __init__(self, chunks, aux_loss_coeff: float = 0.0):
        self._routers = routers(chunks)
        self.layers = [i for i, _ in self._routers]
        n_exp = self._routers[0][1].config.num_moe_experts if self._routers else 0
        self.topk = self._routers[0][1].topk if self._routers else 0
        self.aux_loss_coeff = float(aux_loss_coeff)
        self.counts = torch.zeros(len(self._routers), n_exp, dtype=torch.float64)
        self.prob_sums = torch.zeros(len(self._routers), n_exp, dtype=torch.float64)
        self._handles = []

    def __enter__(self) -> "ExpertLoad":
        for slot, (_, router) in enumerate(self._routers):
            self._handles.append(router.register_forward_hook(self._hook(slot)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, slot: int):
        def hook(module, inputs, output):
            with torch.no_grad():
                routing_map = output[1]  # [tokens, experts] bool
                self.counts[slot] += routing_map.sum(dim=0).to("cpu", torch.float64)
                x = inputs[0].reshape(-1, module.weight.shape[1]).float()
                scores = torch.softmax(x @ module.weight.float().t(), dim=-1)  # the router's softmax, all experts
                self.prob_sums[slot] += scores.sum(dim=0).to("cpu", torch.float64)
        return hook

    def reduce(self, groups, *, sequence_parallel: bool) -> "ExpertLoad":
        """Sum the counts over the ranks that saw different tokens: data × context parallel, and the TP ranks
        under sequence parallelism (each routes its slice of the sequence). Pipeline stages keep their own
        layers (rank 0 reports the first stage's)."""
        import torch.distributed as dist

        spans = [(groups.dp_cp_group, groups.dp_size * groups.cp_size)]
        if sequence_parallel:
            spans.append((groups.tp_group, groups.tp_size))
        for group, size in spans:
            if size > 1:
                moved = torch.stack([self.counts, self.prob_sums]).to(groups.device)
                dist.all_reduce(moved, group=group)
                self.counts, self.prob_sums = moved.cpu().unbind(0)
        return self

    def metrics(self, prefix: str = "moe/") -> dict[str, float]:
        out = {}
        if not self.layers:
            return out
        mean = self.counts.mean(dim=1).clamp_min(1e-12)
        ratio = self.counts.max(dim=1).values / mean
        for layer, r, m in zip(self.layers, ratio.tolist(), self.counts.mean(dim=1).tolist()):
            out[f"{prefix}load_max_over_mean/layer{layer}"] = float(r)
            out[f"{prefix}tokens_per_expert/layer{layer}"] = float(m)
        out[f"{prefix}load_max_over_mean"] = float(ratio.max())
        tokens = (self.counts.sum(dim=1) / max(self.topk, 1)).clamp_min(1.0)  # T per layer
        E = self.counts.shape[1]
        balance = E / (self.topk * tokens ** 2) * (self.counts * self.prob_sums).sum(dim=1)
        out[f"{prefix}balance_loss"] = float(balance.sum())
        if self.aux_loss_coeff > 0:
            out[f"{prefix}aux_loss"] = self.aux_loss_coeff * float(balance.sum())
        return out
