"""Hugging Face safetensors <-> Megatron GPTModel parameters, for any TP, PP and EP.

One table (``weight_units``) lists, in HF order, every HF tensor group and the Megatron
parameter it becomes. Everything else follows from it:

- ``load_hf_weights(chunks, hf_dir, groups=)``: each rank opens the shards lazily (``safe_open`` +
  ``get_slice``) and reads only the rows/columns of its own TP shard of its own pipeline stage's
  parameters, so a rank never holds more than its slice of one tensor at a time beyond its model.
- ``stream_hf_weights(chunks, hf_config, groups=)``: a generator of ``(hf_name, full_tensor)`` in
  ``hf_weight_specs`` order that yields the same full tensors on every rank. It is a collective:
  every rank of the model walks it in step. TP shards are all-gathered on the owning stage, then
  broadcast from that stage over the pipeline group. One unit (at most three HF tensors) is
  alive at a time.
- ``hf_weight_specs(hf_config)``: ordered ``(hf_name, shape, dtype)`` for planning refit buckets.
- ``export_hf(chunks, hf_config, out_dir, groups=)``: a complete HF directory (config.json, sharded
  safetensors + index, tokenizer/generation files copied), written by global rank 0
  (``hf_export.py``).

Megatron layouts (per TP rank r of n; G kv groups, q heads per group P, head dim D, F ffn):
- ``linear_qkv`` rows = for each local group g: [q heads of g (P·D), k of g (D), v of g (D)];
  rank r holds groups [r·G/n, (r+1)·G/n), i.e. contiguous row blocks of q_proj, k_proj, v_proj.
- ``linear_fc1`` rows = [gate rows r·F/n..(r+1)·F/n ; up rows of the same range].
- ``linear_proj`` / ``linear_fc2`` split the input dimension (columns); norms are replicated.
- embedding / output layer rows: the vocabulary padded to a multiple of 128·TP, split in rows;
  padding rows are zero on import and dropped on export.
With tied embeddings there is no ``lm_head.weight`` (as in the HF safetensors); under PP>1 the
last stage's output-layer copy of the embedding is filled from ``model.embed_tokens.weight``.

Qwen3-MoE's routed layers: ``mlp.gate.weight`` [E, h] is megatron's ``mlp.router.weight`` (replicated);
expert e's gate/up/down (HF stores them per expert) are ``mlp.experts.local_experts.<j>.linear_fc1/fc2`` on
the EP rank e // (E/EP), j = e mod (E/EP), TP-split like a dense MLP over the expert-tensor-parallel ranks.
Streaming gathers an expert over expert-TP, then broadcasts it from its EP rank over the EP group.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from red_megatron.hf.config import HFModelConfig, read_hf_config


class WeightMismatchError(ValueError):
    """A checkpoint tensor is missing, unexpected or mis-shaped; the message names it and both shapes."""


@dataclass(frozen=True)
class WeightUnit:
    """HF tensors that map onto one Megatron parameter."""

    kind: str  # "vocab" | "norm" | "qkv" | "fc1" | "row"
    where: str  # "embed" | "layer" | "final_norm" | "lm_head"
    layer: int | None  # global layer index for where == "layer"
    mnames: tuple[str, ...]  # candidate Megatron names (layer units: relative to decoder.layers.<i>.)
    hf_names: tuple[str, ...]
    hf_shapes: tuple[tuple[int, ...], ...]
    expert: int | None = None  # routed expert index (global) for expert units


def weight_units(hf: HFModelConfig) -> list[WeightUnit]:
    """Every HF tensor of ``hf``, grouped by Megatron parameter, in export order."""
    h, q, kv, f, V = hf.hidden_size, hf.q_size, hf.kv_size, hf.intermediate_size, hf.vocab_size
    units = [WeightUnit("vocab", "embed", None, ("embedding.word_embeddings.weight",),
                        ("model.embed_tokens.weight",), ((V, h),))]
    for g in range(hf.num_layers):
        p = f"model.layers.{g}."
        a = p + "self_attn."
        units.append(WeightUnit("norm", "layer", g, ("input_layernorm.weight",
                                                     "self_attention.linear_qkv.layer_norm_weight"),
                                (p + "input_layernorm.weight",), ((h,),)))
        units.append(WeightUnit("qkv", "layer", g, ("self_attention.linear_qkv.weight",),
                                (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"),
                                ((q, h), (kv, h), (kv, h))))
        if hf.qkv_bias:
            units.append(WeightUnit("qkv", "layer", g, ("self_attention.linear_qkv.bias",),
                                    (a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"), ((q,), (kv,), (kv,))))
        if hf.qk_norm:
            units.append(WeightUnit("norm", "layer", g, ("self_attention.q_layernorm.weight",),
                                    (a + "q_norm.weight",), ((hf.head_dim,),)))
            units.append(WeightUnit("norm", "layer", g, ("self_attention.k_layernorm.weight",),
                                    (a + "k_norm.weight",), ((hf.head_dim,),)))
        units.append(WeightUnit("row", "layer", g, ("self_attention.linear_proj.weight",),
                                (a + "o_proj.weight",), ((h, q),)))
        units.append(WeightUnit("norm", "layer", g, ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"),
                                (p + "post_attention_layernorm.weight",), ((h,),)))
        if hf.num_experts and hf.moe_layers[g]:
            units += _expert_units(hf, g)
            continue
        units.append(WeightUnit("fc1", "layer", g, ("mlp.linear_fc1.weight",),
                                (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"), ((f, h), (f, h))))
        units.append(WeightUnit("row", "layer", g, ("mlp.linear_fc2.weight",), (p + "mlp.down_proj.weight",),
                                ((h, f),)))
    units.append(WeightUnit("norm", "final_norm", None, ("decoder.final_layernorm.weight",),
                            ("model.norm.weight",), ((h,),)))
    if not hf.tie_word_embeddings:
        units.append(WeightUnit("vocab", "lm_head", None, ("output_layer.weight",), ("lm_head.weight",), ((V, h),)))
    return units


def _expert_units(hf: HFModelConfig, g: int) -> list[WeightUnit]:
    """A routed layer's router (kind "norm": replicated on every rank) and its experts, in HF order."""
    h, fe, p = hf.hidden_size, hf.moe_intermediate_size, f"model.layers.{g}.mlp."
    units = [WeightUnit("norm", "layer", g, ("mlp.router.weight",), (p + "gate.weight",), ((hf.num_experts, h),))]
    for e in range(hf.num_experts):
        x = f"{p}experts.{e}."
        units.append(WeightUnit("fc1", "layer", g, ("mlp.experts.local_experts.{j}.linear_fc1.weight",),
                                (x + "gate_proj.weight", x + "up_proj.weight"), ((fe, h), (fe, h)), expert=e))
        units.append(WeightUnit("row", "layer", g, ("mlp.experts.local_experts.{j}.linear_fc2.weight",),
                                (x + "down_proj.weight",), ((h, fe),), expert=e))
    return units


def _owner_ep(unit: WeightUnit, hf: HFModelConfig, ep: int) -> int | None:
    """The EP rank holding ``unit``'s expert (None: not an expert tensor, on every EP rank)."""
    return None if unit.expert is None else unit.expert // (hf.num_experts // ep)


def _tp_of(unit: WeightUnit, groups) -> tuple[int, int, object]:
    """(rank, size, group) of the tensor-parallel split ``unit`` lives in: expert-TP for experts."""
    if unit.expert is not None:
        return groups.etp_rank, groups.etp_size, groups.etp_group
    return groups.tp_rank, groups.tp_size, groups.tp_group


def _default_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def hf_weight_specs(hf_config, *, dtype: torch.dtype | None = None) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Ordered (hf_name, shape, dtype) of what ``stream_hf_weights`` yields.

    ``hf_config``: an HF dir / config dict / HFModelConfig, or model chunks from build_model (then
    dtype defaults to their parameter dtype; otherwise to bf16 with CUDA, fp32 without).
    """
    if isinstance(hf_config, (list, tuple)):
        chunks = hf_config
        hf = _hf_of(chunks)
        dtype = dtype or next(chunks[0].parameters()).dtype
    else:
        hf = read_hf_config(hf_config)
    dtype = dtype or _default_dtype()
    return [(n, tuple(s), dtype) for u in weight_units(hf) for n, s in zip(u.hf_names, u.hf_shapes)]


# ---------------------------------------------------------------- model-side bookkeeping


def _hf_of(chunks, hf_config=None) -> HFModelConfig:
    if hf_config is not None:
        return read_hf_config(hf_config)
    hf = getattr(chunks[0], "hf_config", None)
    if hf is None:
        raise ValueError("pass hf_config: these chunks were not built by model.build_model")
    return hf


def _owner_stage(unit: WeightUnit, hf: HFModelConfig, pp: int) -> int:
    if unit.where == "embed":
        return 0
    if unit.where == "layer":
        return unit.layer // (hf.num_layers // pp)
    return pp - 1


def _local_params(chunks, unit: WeightUnit, hf: HFModelConfig, groups=None) -> list[tuple[str, torch.nn.Parameter]]:
    """This rank's Megatron parameter(s) for ``unit`` (usually one; tied PP>1 embeddings: two; an expert
    of another EP rank: none)."""
    out = []
    mnames = unit.mnames
    if unit.expert is not None:
        ep_size, ep_rank = (groups.ep_size, groups.ep_rank) if groups is not None else (1, 0)
        per_rank = hf.num_experts // ep_size
        if _owner_ep(unit, hf, ep_size) != ep_rank:
            return out
        mnames = tuple(m.format(j=unit.expert - ep_rank * per_rank) for m in mnames)
    for chunk in chunks:
        params = dict(chunk.named_parameters())
        if unit.where == "layer":
            for i, layer in enumerate(chunk.decoder.layers):
                if layer.layer_number - 1 == unit.layer:
                    name = _pick(params, [f"decoder.layers.{i}.{m}" for m in mnames], unit)
                    out.append((name, params[name]))
        elif unit.where == "embed":
            if chunk.pre_process:
                out.append(("embedding.word_embeddings.weight", params["embedding.word_embeddings.weight"]))
            if hf.tie_word_embeddings and chunk.post_process and not chunk.pre_process:
                out.append(("output_layer.weight", params["output_layer.weight"]))
        elif chunk.post_process:
            name = _pick(params, list(unit.mnames), unit)
            out.append((name, params[name]))
    return out


def _pick(params: dict, names: list[str], unit: WeightUnit) -> str:
    for n in names:
        if n in params:
            return n
    raise WeightMismatchError(f"the Megatron model has none of {names} (for HF {unit.hf_names})")


# ---------------------------------------------------------------- HF -> Megatron


class _LazyCheckpoint:
    """Open safetensors shards on demand; read slices only (``get_slice``)."""

    def __init__(self, hf_dir):
        from red_megatron.hf.safetensors import weight_map

        self.dir = Path(hf_dir)
        self.where = weight_map(self.dir)
        self._open: dict = {}

    def names(self) -> set[str]:
        return set(self.where)

    def slice(self, name: str):
        from safetensors import safe_open

        fname = self.where[name]
        if fname not in self._open:
            try:
                self._open[fname] = safe_open(str(self.dir / fname), framework="pt")
            except Exception as e:  # noqa: BLE001 - SafetensorError / OSError: name the file
                raise WeightMismatchError(f"unreadable weights file in {self.dir / fname}: expected a complete "
                                          f"safetensors file ({e})") from None
        return self._open[fname].get_slice(name)


def _check_names(ckpt: _LazyCheckpoint, hf: HFModelConfig) -> None:
    expected = {n for u in weight_units(hf) for n in u.hf_names}
    have = {n for n in ckpt.names() if not n.endswith("rotary_emb.inv_freq")}
    if hf.tie_word_embeddings:
        have.discard("lm_head.weight")  # some tied checkpoints store the shared copy too
    missing, extra = sorted(expected - have), sorted(have - expected)
    if missing:
        raise WeightMismatchError(f"checkpoint {ckpt.dir} lacks {len(missing)} tensor(s) the config needs, "
                                  f"first: {missing[:5]}")
    if extra:
        raise WeightMismatchError(f"checkpoint {ckpt.dir} has {len(extra)} tensor(s) the {hf.architecture} config "
                                  f"does not use, first: {extra[:5]}")


def _read_local(ckpt: _LazyCheckpoint, unit: WeightUnit, hf: HFModelConfig, r: int, n: int) -> torch.Tensor:
    """This TP rank's shard of ``unit`` in Megatron's layout, reading only the needed slices."""
    slices = []
    for name, shape in zip(unit.hf_names, unit.hf_shapes):
        sl = ckpt.slice(name)
        got = tuple(sl.get_shape())
        if got != tuple(shape):
            raise WeightMismatchError(f"tensor {name}: checkpoint shape {got} != expected {tuple(shape)} "
                                      f"(from config.json)")
        slices.append(sl)
    if unit.kind == "norm":
        return slices[0][:]
    if unit.kind == "row":
        cols = unit.hf_shapes[0][1] // n
        return slices[0][:, r * cols:(r + 1) * cols]
    if unit.kind == "fc1":
        rows = unit.hf_shapes[0][0] // n
        return torch.cat([s[r * rows:(r + 1) * rows] for s in slices], dim=0)
    if unit.kind == "qkv":
        G, D = hf.num_kv_heads // n, hf.head_dim
        P = hf.num_heads // hf.num_kv_heads
        q = slices[0][r * G * P * D:(r + 1) * G * P * D]
        k = slices[1][r * G * D:(r + 1) * G * D]
        v = slices[2][r * G * D:(r + 1) * G * D]
        tail = q.shape[1:]
        qkv = torch.cat([q.reshape(G, P * D, *tail), k.reshape(G, D, *tail), v.reshape(G, D, *tail)], dim=1)
        return qkv.reshape(G * (P + 2) * D, *tail)
    if unit.kind == "vocab":
        V, h = unit.hf_shapes[0]
        rows = hf.padded_vocab_size(n) // n
        lo, hi = r * rows, min((r + 1) * rows, V)
        out = torch.zeros(rows, h, dtype=slices[0][0:1].dtype)
        if hi > lo:
            out[: hi - lo] = slices[0][lo:hi]
        return out
    raise AssertionError(unit.kind)


@torch.no_grad()
def load_hf_weights(chunks, hf_dir, hf_config=None, *, groups) -> int:
    """Fill this rank's chunks (in ``groups``' layout) from an HF checkpoint directory; returns the
    number of params set.

    Raises WeightMismatchError naming the tensor when the checkpoint lacks a tensor the config
    needs, has one it does not use, or a tensor's shape differs from the config's.
    """
    hf = _hf_of(chunks, hf_config if hf_config is not None else hf_dir)
    ckpt = _LazyCheckpoint(hf_dir)
    _check_names(ckpt, hf)
    count = 0
    for unit in weight_units(hf):
        targets = _local_params(chunks, unit, hf, groups)
        if not targets:
            continue
        r, n, _ = _tp_of(unit, groups)
        local = _read_local(ckpt, unit, hf, r, n)
        if local.is_floating_point() and not bool(torch.isfinite(local).all()):
            raise WeightMismatchError(f"non-finite values (NaN/Inf) in tensor {_first_nonfinite(ckpt, unit)} of "
                                      f"{ckpt.dir}: expected finite weights")
        for mname, param in targets:
            if tuple(local.shape) != tuple(param.shape):
                raise WeightMismatchError(f"Megatron param {mname} (from {unit.hf_names}): shard shape "
                                          f"{tuple(local.shape)} != model shape {tuple(param.shape)}")
            param.data.copy_(local.to(param.dtype))
            count += 1
        del local
    return count


def _first_nonfinite(ckpt: _LazyCheckpoint, unit: WeightUnit) -> str:
    """The first of ``unit``'s HF tensors holding a NaN/Inf (the unit's names if the slice hides it)."""
    for name in unit.hf_names:
        t = ckpt.slice(name)[:]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return "/".join(unit.hf_names)


# ---------------------------------------------------------------- Megatron -> HF


def _full_from_parts(unit: WeightUnit, hf: HFModelConfig, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Full HF tensors of ``unit`` from the TP shards (rank order)."""
    n = len(parts)
    if unit.kind == "norm":
        return [parts[0]]
    if unit.kind == "row":
        return [torch.cat(parts, dim=1)]
    if unit.kind == "vocab":
        return [torch.cat(parts, dim=0)[: unit.hf_shapes[0][0]]]
    if unit.kind == "fc1":
        halves = [p.chunk(2, dim=0) for p in parts]
        return [torch.cat([a for a, _ in halves], dim=0), torch.cat([b for _, b in halves], dim=0)]
    if unit.kind == "qkv":
        G, D, P = hf.num_kv_heads, hf.head_dim, hf.num_heads // hf.num_kv_heads
        full = torch.cat(parts, dim=0)
        tail = full.shape[1:]
        grouped = full.reshape(G, (P + 2) * D, *tail)
        q, k, v = grouped.split([P * D, D, D], dim=1)
        return [q.reshape(G * P * D, *tail), k.reshape(G * D, *tail), v.reshape(G * D, *tail)]
    raise AssertionError(unit.kind)


def _tp_gather(t: torch.Tensor, unit: WeightUnit, groups) -> list[torch.Tensor]:
    _, n, group = _tp_of(unit, groups)
    if n == 1 or unit.kind == "norm":
        return [t]
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


@torch.no_grad()
def stream_hf_weights(model_chunks, hf_config=None, *, groups, dtype: torch.dtype | None = None
                      ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) in ``hf_weight_specs`` order, identical on every rank.

    A collective generator: every rank holding the model must exhaust it in step (the tensors
    of a stage are gathered over TP and broadcast from that stage over PP). Tensors live on the
    parameters' device; ``dtype`` casts them (default: the parameters' dtype).
    """
    hf = _hf_of(model_chunks, hf_config)
    stage, pp = groups.pp_rank, groups.pp_size
    device = next(model_chunks[0].parameters()).device
    dtype = dtype or next(model_chunks[0].parameters()).dtype
    pp_group, pp_ranks = groups.pp_group, groups.pp_ranks
    ep_ranks = tuple(dist.get_process_group_ranks(groups.ep_group)) if groups.ep_size > 1 else ()
    for unit in weight_units(hf):
        owner = _owner_stage(unit, hf, pp)
        ep_owner = _owner_ep(unit, hf, groups.ep_size)
        if owner == stage and ep_owner in (None, groups.ep_rank):
            targets = _local_params(model_chunks, unit, hf, groups)
            mname, param = targets[0]
            fulls = [t.to(dtype) for t in _full_from_parts(
                unit, hf, _tp_gather(param.detach(), unit, groups))]
            for name, shape, t in zip(unit.hf_names, unit.hf_shapes, fulls):
                assert tuple(t.shape) == tuple(shape), (name, tuple(t.shape), shape)
        else:
            fulls = [torch.empty(s, dtype=dtype, device=device) for s in unit.hf_shapes]
        if owner == stage and ep_owner is not None and groups.ep_size > 1:
            for t in fulls:  # the expert's EP rank hands it to the other EP ranks of this stage
                dist.broadcast(t, src=ep_ranks[ep_owner], group=groups.ep_group)
        if pp > 1:
            for t in fulls:
                dist.broadcast(t, src=pp_ranks[owner], group=pp_group)
        for name, t in zip(unit.hf_names, fulls):
            yield name, t
        del fulls


def export_hf(model_chunks, hf_config, out_dir, *, groups, tokenizer_dir=None, dtype: torch.dtype | None = None,
              max_shard_bytes: int = 4 << 30) -> Path:
    """Write a complete HF directory to ``out_dir`` (collective; global rank 0 writes).

    config.json is the source config (dtype updated); tokenizer and generation files are copied
    from ``tokenizer_dir`` (default: ``hf_config`` when it is a directory).
    """
    from red_megatron.policy.hf_export import write_hf_directory

    hf = _hf_of(model_chunks, hf_config)
    src_dir = tokenizer_dir if tokenizer_dir is not None else (
        hf_config if isinstance(hf_config, (str, Path)) and Path(hf_config).is_dir() else None)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    out = write_hf_directory(stream_hf_weights(model_chunks, hf, groups=groups, dtype=dtype), hf.raw, out_dir,
                             src_dir=src_dir,
                             write=rank0, max_shard_bytes=max_shard_bytes)
    if dist.is_initialized():
        dist.barrier()
    return out
