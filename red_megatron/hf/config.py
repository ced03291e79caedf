"""Read a Hugging Face ``config.json`` into one validated description of a decoder-only model.

Why not ``transformers.AutoConfig``: the fields moved between transformers 4 and 5 (``rope_theta`` /
``rope_scaling`` became ``rope_parameters``) and a silent default is worse than an error here.
This module reads the raw JSON, accepts both spellings, and refuses anything the Megatron
model of ``model.py`` would compute differently from transformers: a ``ValueError`` names the
field, the value found and what is supported.

Supported: Qwen2 / Qwen2.5 (incl. Math; tied or untied embeddings; QKV bias), Llama 3.x
(``rope_scaling`` of type ``llama3``, or none), Qwen3 (per-head q/k RMSNorm), Qwen3-MoE (Qwen3's
attention; routed experts with a softmax top-k router, ``norm_topk_prob``, dense layers chosen by
``mlp_only_layers`` / ``decoder_sparse_step``; no shared experts). No megatron import
here (nor vllm): the run validator, the policy, the rollout engine and the benchmarks all read
checkpoints through this package.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

# architecture name in config.json -> family
ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
_MODEL_TYPES = {"qwen2": "qwen2", "llama": "llama", "qwen3": "qwen3", "qwen3_moe": "qwen3_moe"}
_ROPE_TYPES = ("default", "llama3")


@dataclass(kw_only=True)
class HFModelConfig:
    """Everything the Megatron model and the weight converter need, in HF's terms."""

    family: str  # "qwen2" | "llama" | "qwen3" | "qwen3_moe"
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # normalised llama3 parameters, or None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    # mixture of experts (num_experts == 0: dense). moe_layers[i]: layer i is routed (else a dense MLP of
    # intermediate_size); each expert is a SwiGLU MLP of moe_intermediate_size.
    num_experts: int = 0
    moe_top_k: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True  # the top-k probabilities renormalised to sum to 1
    moe_layers: tuple[bool, ...] = ()
    raw: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"config.json: {name} must be a positive int, got {v!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"config.json: num_key_value_heads ({self.num_kv_heads}) must divide "
                             f"num_attention_heads ({self.num_heads})")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"config.json: rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if self.num_experts:
            if not 1 <= self.moe_top_k <= self.num_experts:
                raise ValueError(f"config.json: num_experts_per_tok must be in [1, num_experts={self.num_experts}], "
                                 f"got {self.moe_top_k!r}")
            if not isinstance(self.moe_intermediate_size, int) or self.moe_intermediate_size < 1:
                raise ValueError(f"config.json: moe_intermediate_size must be a positive int, "
                                 f"got {self.moe_intermediate_size!r}")
            if len(self.moe_layers) != self.num_layers:
                raise ValueError(f"moe_layers has {len(self.moe_layers)} entries for {self.num_layers} layers")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0 and any(self.moe_layers)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def pad_token_id(self) -> int:
        pad = self.raw.get("pad_token_id")
        return int(pad) if isinstance(pad, int) else 0

    # --- what a layout may do with these heads and layers (the one statement of each rule) ---------
    def check_megatron_tp(self, tp: int, field: str = "policy.tp") -> None:
        """Megatron shards q heads and KV groups (and each expert's matrices, expert-TP = TP): TP divides them."""
        sizes = [("num_attention_heads", self.num_heads), ("num_key_value_heads", self.num_kv_heads)]
        if self.is_moe:
            sizes.append(("moe_intermediate_size", self.moe_intermediate_size))
        for name, n in sizes:
            if n % tp != 0:
                raise ValueError(f"{field}={tp} must divide the checkpoint's {name}={n}")

    def check_vllm_tp(self, tp_infer: int, field: str = "rollout.tp_infer") -> None:
        check_vllm_tp(self.num_heads, self.num_kv_heads, tp_infer, field)
        if self.is_moe and self.moe_intermediate_size % tp_infer != 0:  # vLLM's fused MoE splits each expert
            raise ValueError(f"{field}={tp_infer} must divide the checkpoint's moe_intermediate_size="
                             f"{self.moe_intermediate_size}")

    def check_ep(self, ep: int, field: str = "policy.ep") -> None:
        """Expert parallelism splits the routed experts evenly over the EP ranks (a dense model takes ep=1)."""
        if ep == 1:
            return
        if not self.is_moe:
            raise ValueError(f"{field}={ep} needs a mixture-of-experts checkpoint; {self.architecture} has no "
                             f"routed experts (use {field}=1)")
        if self.num_experts % ep != 0:
            raise ValueError(f"{field}={ep} must divide the checkpoint's num_experts={self.num_experts}")

    def check_pp(self, pp: int, field: str = "policy.pp") -> None:
        if self.num_layers % pp != 0:
            raise ValueError(f"{field}={pp} must divide the checkpoint's num_hidden_layers={self.num_layers}")

    def padded_vocab_size(self, tp: int) -> int:
        """Megatron's vocabulary: padded to a multiple of 128·TP so every TP shard is equal."""
        mult = 128 * tp
        return int(math.ceil(self.vocab_size / mult) * mult)

    def num_params(self) -> int:
        """Parameter count of the HF model (tied embeddings counted once)."""
        h, L = self.hidden_size, self.num_layers
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        if self.qkv_bias:
            attn += self.q_size + 2 * self.kv_size
        if self.qk_norm:
            attn += 2 * self.head_dim
        dense = 3 * h * self.intermediate_size
        routed = self.num_experts * 3 * h * self.moe_intermediate_size + self.num_experts * h  # experts + router
        mlp = sum(routed if m else dense for m in self.moe_layers) if self.num_experts else L * dense
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return emb + L * (attn + 2 * h) + mlp + h

    def num_active_params(self) -> int:
        """Parameters one token uses: the top-k experts of each routed layer, not all of them."""
        if not self.num_experts:
            return self.num_params()
        idle = (self.num_experts - self.moe_top_k) * 3 * self.hidden_size * self.moe_intermediate_size
        return self.num_params() - idle * sum(self.moe_layers)


def check_vllm_tp(num_heads: int, num_kv_heads: int, tp_infer: int, field: str = "rollout.tp_infer") -> None:
    """vLLM shards q heads and replicates KV heads when its TP exceeds them: TP divides the q heads
    and either divides the KV heads or is a multiple of them."""
    if num_heads % tp_infer != 0:
        raise ValueError(f"{field}={tp_infer} must divide the checkpoint's num_attention_heads={num_heads}")
    if num_kv_heads % tp_infer != 0 and tp_infer % num_kv_heads != 0:
        raise ValueError(f"{field}={tp_infer} must divide the checkpoint's num_key_value_heads={num_kv_heads} "
                         f"or be a multiple of it (vLLM replicates KV heads)")


def read_config_json(src) -> dict:
    """The raw config.json of a directory or path (errors name the file)."""
    return _load_dict(src)


def _load_dict(src) -> dict:
    if isinstance(src, dict):
        return dict(src)
    if hasattr(src, "to_dict"):  # a transformers PretrainedConfig
        return src.to_dict()
    p = Path(src)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"no config.json at {p}")
    try:
        d = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable config.json in {p}: expected complete UTF-8 JSON ({e}; truncated?)") from None
    if not isinstance(d, dict):
        raise ValueError(f"unreadable config.json in {p}: expected a JSON object, got {type(d).__name__}")
    return d


def _rope(d: dict) -> tuple[float, dict | None]:
    """(rope_theta, llama3 scaling or None) from either transformers-4 or -5 spelling."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    theta = d.get("rope_theta")
    if isinstance(params, dict):
        theta = params.get("rope_theta", theta)
        if params.get("rope_type", params.get("type", "default")) != "default":
            scaling = params
    if theta is None:
        theta = 10000.0
    if scaling is None:
        return float(theta), None
    if not isinstance(scaling, dict):
        raise ValueError(f"config.json: rope_scaling must be a dict or null, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise ValueError(f"config.json: rope_scaling.rope_type {rope_type!r} is not supported "
                         f"(supported: {_ROPE_TYPES})")
    if rope_type == "default":
        return float(theta), None
    out = {}
    for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if k not in scaling:
            raise ValueError(f"config.json: rope_scaling.{k} is required for rope_type 'llama3'")
        out[k] = float(scaling[k])
    return float(theta), out


def _require(d: dict, name: str, ok, what: str) -> None:
    if name in d and d[name] is not None and not ok(d[name]):
        raise ValueError(f"config.json: {name}={d[name]!r} is not supported ({what})")


def read_hf_config(src) -> HFModelConfig:
    """Parse a checkpoint directory, a config.json path, a dict or a PretrainedConfig."""
    if isinstance(src, HFModelConfig):
        return src
    d = _load_dict(src)
    archs = d.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise ValueError(f"config.json: architectures={archs!r} is not supported "
                         f"(supported: {sorted(ARCHITECTURES)})")
    family = ARCHITECTURES[arch]
    if d.get("model_type") not in (None, _MODEL_TYPES[family]):
        raise ValueError(f"config.json: model_type={d.get('model_type')!r} does not match "
                         f"architectures={archs!r} (expected {_MODEL_TYPES[family]!r})")
    _require(d, "hidden_act", lambda v: v == "silu", "only 'silu' (SwiGLU)")
    _require(d, "use_sliding_window", lambda v: v is False, "sliding-window attention is not implemented")
    _require(d, "layer_types", lambda v: all(t == "full_attention" for t in v), "only full_attention layers")
    _require(d, "mlp_bias", lambda v: v is False, "MLP biases are not implemented")
    _require(d, "attention_dropout", lambda v: float(v) == 0.0, "attention dropout must be 0")
    _require(d, "partial_rotary_factor", lambda v: float(v) == 1.0, "only full-head RoPE")
    if isinstance(d.get("rope_parameters"), dict):
        _require(d["rope_parameters"], "partial_rotary_factor", lambda v: float(v) == 1.0,
                 "rope_parameters: only full-head RoPE")
    _require(d, "pretraining_tp", lambda v: int(v) == 1, "only pretraining_tp=1")
    if family in ("llama", "qwen3", "qwen3_moe"):
        # Megatron's add_qkv_bias has no o_proj bias: attention_bias (q,k,v AND o) cannot be mapped.
        _require(d, "attention_bias", lambda v: v is False, "q/k/v/o biases are not implemented for this family")
    theta, scaling = _rope(d)
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    if not d.get("head_dim") and heads > 0 and hidden % heads:
        raise ValueError(f"config.json: hidden_size ({hidden}) must be divisible by num_attention_heads ({heads}) "
                         f"when head_dim is not given")
    head_dim = d.get("head_dim") or hidden // heads
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if key not in d:
            raise ValueError(f"config.json: required field {key} is missing")
    return HFModelConfig(
        family=family, architecture=arch, vocab_size=int(d["vocab_size"]), hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(d.get("num_key_value_heads") or heads), head_dim=int(head_dim),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling,
        max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2", qk_norm=family in ("qwen3", "qwen3_moe"), raw=d,
        **(_moe_fields(d) if family == "qwen3_moe" else {}),
    )


def _moe_fields(d: dict) -> dict:
    """Qwen3-MoE's routing fields; a layer is routed unless listed in mlp_only_layers or off the sparse step
    (transformers' and vLLM's rule)."""
    for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
        if key not in d:
            raise ValueError(f"config.json: required field {key} is missing (Qwen3MoeForCausalLM)")
    _require(d, "shared_expert_intermediate_size", lambda v: int(v) == 0, "shared experts are not implemented")
    layers = int(d["num_hidden_layers"])
    step = int(d.get("decoder_sparse_step") or 1)
    if step < 1:
        raise ValueError(f"config.json: decoder_sparse_step must be >= 1, got {step}")
    dense = d.get("mlp_only_layers") or []
    if not isinstance(dense, list) or not all(isinstance(i, int) and 0 <= i < layers for i in dense):
        raise ValueError(f"config.json: mlp_only_layers must list layer indices in [0, {layers}), got {dense!r}")
    experts = int(d["num_experts"])
    moe = tuple(i not in dense and experts > 0 and (i + 1) % step == 0 for i in range(layers))
    return dict(num_experts=experts, moe_top_k=int(d["num_experts_per_tok"]),
                moe_intermediate_size=int(d["moe_intermediate_size"]),
                norm_topk_prob=bool(d.get("norm_topk_prob", False)), moe_layers=moe)


def rope_inv_freq(cfg: HFModelConfig) -> torch.Tensor:
    """inv_freq [head_dim/2] fp32 exactly as transformers computes it (default or llama3 scaling)."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv
    factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / inv
    inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, inv_llama)
