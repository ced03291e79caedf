"""A frozen reference policy: the weights of a Hugging Face directory, in the policy's layout, no grad.

Rollout DPO (algo/dpo.py) scores every sample of a step under the policy of the stage's start. The
samples are new every step, so their reference log-probs cannot be computed once up front: each step
runs one extra no-grad pass of these frozen chunks over the same ``StepBatch`` the policy's passes
use. The chunks are loaded from the stage's ``model_dir`` (what the policy itself started from), so a
resumed run has the same reference. Cost: one more copy of the weights (no gradients, no optimizer
state) and one forward per step; docs/ALGORITHM.md gives what it measured.
"""
from __future__ import annotations

import torch

from red_megatron.policy.batching import StepBatch


class FrozenReference:
    def __init__(self, hf_dir, *, groups, dtype: torch.dtype, vocab_size: int, temperature: float,
                 logprob_entropy, sequence_parallel: bool = False, lm_head_fp32: bool = False):
        from red_megatron.policy import convert, model

        # init_weights=False: the weights are loaded next, and no random init draws from the run's RNG
        self.chunks = model.build_model(hf_dir, groups=groups, dtype=dtype, lm_head_fp32=lm_head_fp32,
                                        options=model.ModelOptions(sequence_parallel=sequence_parallel,
                                                                   init_weights=False))
        convert.load_hf_weights(self.chunks, hf_dir, groups=groups)
        for c in self.chunks:
            c.requires_grad_(False)
        if groups.pp_size > 1:  # as MegatronPolicy sets on its own chunks: packed micro-batches differ in length
            from megatron.core.utils import get_model_config

            mcfg = get_model_config(self.chunks[0])
            mcfg.variable_seq_lengths = True
            mcfg.pipeline_dtype = mcfg.pipeline_dtype or dtype
        self.groups, self.vocab_size, self.temperature = groups, int(vocab_size), float(temperature)
        self._logprob_entropy = logprob_entropy

    def logprobs(self, batch: StepBatch) -> torch.Tensor:
        """logp_N (fp32, CPU, N order) of the batch's response tokens under the frozen weights."""
        from red_megatron.policy.passes import logprob_pass

        logp, _ = logprob_pass(self.chunks, batch, groups=self.groups, vocab_size=self.vocab_size,
                               temperature=self.temperature, logprob_entropy=self._logprob_entropy)
        return logp.cpu()
