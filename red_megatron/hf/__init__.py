"""Hugging Face checkpoints: the one typed ``config.json`` parser (with the TP/PP rules a layout must
meet) and the one safetensors index/header reader. Imports neither megatron nor vllm."""
from red_megatron.hf.config import HFModelConfig, read_hf_config, rope_inv_freq
from red_megatron.hf.safetensors import tensor_specs, weight_files, weight_map

__all__ = ["HFModelConfig", "read_hf_config", "rope_inv_freq", "tensor_specs", "weight_files", "weight_map"]
