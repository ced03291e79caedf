"""benchmarks/step_throughput.py on the CPU: the per-stage RED step benchmark runs the trainer's policy
code end to end at a tiny shape, and its parameter count (the MFU numerator) is exact."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import step_throughput as S  # noqa: E402


@pytest.mark.parametrize("shape", ["smoke", "0.5b", "1.5b", "7b"])
def test_param_count_matches_transformers(shape):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = S.hf_config_dict(shape)
    hf_cfg = Qwen2Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        model = Qwen2ForCausalLM(hf_cfg)
    assert S.n_params(cfg) == sum(p.numel() for p in model.parameters())


def test_synthetic_batch_has_one_trace_per_group_and_red_terms():
    tokens, prompt_lens, terms = S.synthetic_batch(S.hf_config_dict("smoke"), prompts=3, group=4, response=16,
                                                   prompt_len=5, seed=0)
    assert len(tokens) == 12 and prompt_lens == [5] * 12
    n_resp = sum(len(t) - 5 for t in tokens)
    assert terms.kind_N.numel() == n_resp and (terms.weight_N > 0).all()


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "step_throughput.py"), "--shapes", "smoke", "--prompts", "2",
           "--group", "3", "--response", "16", "--prompt-len", "8", "--repeats", "1", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = json.loads((tmp_path / "step_throughput.json").read_text())["shapes"]
    assert "error" not in rec, rec
    assert rec["sequences"] == 6 and rec["tokens"] > 6 * 8
    for stage in ("old_logprob", "update", "refit_stream"):
        assert rec[stage]["seconds"] > 0
    assert rec["old_logprob"]["tokens_per_s"] > 0 and rec["update"]["tokens_per_s"] > 0


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        S.main(["--shapes", "13b"])
    assert "--shapes: unknown ['13b']" in capsys.readouterr().err
