"""config.json of the public models the recipes name, for tests that check layouts without weights."""
from __future__ import annotations

# The models' own config.json numbers (Hugging Face hub, Qwen2.5 family). Qwen2.5-Math-1.5B as the
# qwen25 recipe's doc says to prepare it (LUFFY's rope_theta 40000, 16k positions).
SHAPES = {
    "Qwen2.5-Math-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=16384,
                              rope_theta=40000.0, tie_word_embeddings=True),
    # the scaling study's GPU sizes (red-study --sizes ... --check)
    "Qwen2.5-0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                         tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=1e6,
                         tie_word_embeddings=True),
    "Qwen2.5-3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                       tie_word_embeddings=True),
    "Qwen2.5-7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=131072, rope_theta=1e6,
                       tie_word_embeddings=False),
    "Qwen2.5-32B": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, vocab_size=152064, max_position_embeddings=131072, rope_theta=1e6,
                        tie_word_embeddings=False),
}




def qwen25_config(name: str, **overrides) -> dict:
    """A complete config.json dict for ``name`` (a key of SHAPES)."""
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "rms_norm_eps": 1e-6,
            "use_sliding_window": False, "attention_dropout": 0.0, "torch_dtype": "bfloat16", **SHAPES[name],
            **overrides}


# Qwen3-30B-A3B's config.json (Hugging Face hub): 48 layers, all routed; 128 experts of 768, top-8.
QWEN3_30B_A3B = dict(
    architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_act="silu", rms_norm_eps=1e-6,
    hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
    head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True,
    decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.001, vocab_size=151936,
    max_position_embeddings=40960, rope_theta=1e6, tie_word_embeddings=False, attention_bias=False,
    use_sliding_window=False, attention_dropout=0.0, torch_dtype="bfloat16")
