"""Re-score recorded rollouts with a saved checkpoint (tests/test_async_e2e.py runs it in a subprocess).

    python tests/async_rescore.py MODEL_DIR CHECKPOINT EXPERIENCE.pt TEMPERATURE

Prints one JSON line: the max |engine logp - trainer logp| over the recorded online tokens, with the
checkpoint's weights in the trainer (Megatron, one process).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main(model_dir, ckpt, exp_path, temperature) -> None:
    from red_megatron.experience import merge_experience
    from red_megatron.policy import MegatronPolicy
    from red_megatron.policy.config import PolicyConfig

    policy = MegatronPolicy.from_hf(model_dir, PolicyConfig(dtype="float32", micro_batch_tokens=4096), seed=0)
    policy.load_checkpoint(ckpt, load_optimizer=False, load_rng=False)
    exp = merge_experience(torch.load(exp_path, weights_only=False))
    tokens, prompt_lens = exp.sequences()
    logp, _ = policy.logprobs_and_entropy(tokens, prompt_lens, float(temperature))
    per = torch.split(logp.double(), [len(r) for r in exp.response_ids])
    gaps = [(torch.tensor(e, dtype=torch.float64) - t).abs().max().item()
            for e, t in zip(exp.engine_logp, per) if e is not None]
    print(json.dumps({"max_gap": max(gaps), "versions": sorted(set(exp.policy_version))}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
