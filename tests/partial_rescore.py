"""Re-score partial rollouts token by token with the weights of the version that produced each token.

    python tests/partial_rescore.py MODEL_DIR CHECKPOINT_ROOT TEMPERATURE EXPERIENCE.pt [EXPERIENCE.pt ...]

Version 0 is the HF checkpoint itself, version v >= 1 the run's checkpoint step_{v:08d} (weights after v
optimiser steps). Prints one JSON line: the max |engine logp - trainer logp| over every recorded online
token, each under its own version, and the same gap with every token scored under the newest version
(which must be clearly worse when samples span versions).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main(model_dir, ckpt_root, temperature, *exp_paths) -> None:
    from red_megatron.experience import merge_experience
    from red_megatron.policy import MegatronPolicy
    from red_megatron.policy.config import PolicyConfig

    exps = [merge_experience(torch.load(p, weights_only=False)) for p in exp_paths]
    versions = sorted({v for e in exps for tv in e.token_versions if tv is not None for v in tv})
    policy = MegatronPolicy.from_hf(model_dir, PolicyConfig(dtype="float32", micro_batch_tokens=4096), seed=0)
    initial = {k: v.detach().clone() for k, v in policy.ddp[0].state_dict().items() if torch.is_tensor(v)}
    gap_own, gap_newest = 0.0, 0.0
    per_version_logp = {}
    for v in versions:
        if v == 0:
            policy.ddp[0].load_state_dict(initial, strict=False)
        else:
            policy.load_checkpoint(Path(ckpt_root) / f"step_{v:08d}", load_optimizer=False, load_rng=False)
        per_version_logp[v] = []
        for e in exps:
            tokens, prompt_lens = e.sequences()
            logp, _ = policy.logprobs_and_entropy(tokens, prompt_lens, float(temperature))
            per_version_logp[v].append(torch.split(logp.double(), [len(r) for r in e.response_ids]))
    newest = versions[-1]
    for i, e in enumerate(exps):
        for b, (lp, tv) in enumerate(zip(e.engine_logp, e.token_versions)):
            if tv is None:
                continue
            eng = torch.tensor(lp, dtype=torch.float64)
            own = torch.stack([per_version_logp[v][i][b][t] for t, v in enumerate(tv)])
            gap_own = max(gap_own, float((eng - own).abs().max()))
            gap_newest = max(gap_newest, float((eng - per_version_logp[newest][i][b]).abs().max()))
    print(json.dumps({"max_gap_own_version": gap_own, "max_gap_newest_version": gap_newest, "versions": versions}))


if __name__ == "__main__":
    main(*sys.argv[1:])
