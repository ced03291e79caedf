"""vLLM tensor parallelism inside a torchrun world (external_launcher), on the CPU with gloo.

Two ranks each build a TP=2 engine over a tiny checkpoint with tied embeddings, receive the *full* HF tensors of a
perturbed model (as ``stream_hf_weights`` gives them on every rank) and keep their shard. Each
rank checks greedy output and log-probs against transformers, and that refitting the original
weights restores the original outputs exactly. Run as a subprocess (this file is its own
torchrun entry point): vLLM binds threads and NUMA memory in the processes it runs in.
"""
import json
import os
import sys
from pathlib import Path

import pytest

PROMPTS = [[1, 50, 60, 70, 80], [1, 300, 12, 9]]
_TIMEOUT_S = float(os.environ.get("RED_TP2_TEST_TIMEOUT", "900"))


@pytest.mark.vllm
@pytest.mark.slow
def test_tp2_external_launcher_refit(tmp_path):
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    # tied embeddings, as Qwen2.5-1.5B: vLLM's layerwise reload alone leaves a stale lm_head there
    ckpt = make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", tie_word_embeddings=True, seed=5),
                                tmp_path / "tied_qwen2")
    out = tmp_path / "results"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           str(ckpt), str(out)]
    from tests.procs import run_in_session

    rc, stdout, stderr = run_in_session(cmd, timeout=_TIMEOUT_S, what="2-rank vLLM run", env=env)
    assert rc == 0, stdout[-3000:] + stderr[-6000:]
    res = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for r in res:
        assert r["greedy_before"] == r["hf_greedy_before"]
        assert r["greedy_after"] == r["hf_greedy_after"] and r["greedy_after"] != r["greedy_before"]
        assert r["gap_after"][0] <= 1e-3, r["gap_after"]
        assert r["restored"] == r["before_full"], "refitting the original weights must restore outputs exactly"
        assert r["tp_size"] == 2
        assert "different prompts" in r["mismatch_error"]
    assert res[0]["greedy_after"] == res[1]["greedy_after"]  # the ranks stay in lock-step
    assert res[0]["shard_shapes"] != res[0]["full_shapes"]  # each rank holds a shard, not the full model


def _rank_main(ckpt: str, out_dir: str) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of
    from red_megatron.rollout.verify import verify_refit

    rank = int(os.environ["RANK"])
    eng = RolloutEngine(ckpt, RolloutConfig(dtype="float32", max_model_len=128, tp_infer=2,
                                            executor="external_launcher", seed=0))
    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()

    def hf_greedy():
        with torch.no_grad():
            return [hf.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(p):].tolist() for p in PROMPTS]

    def greedy():
        return [s[0].token_ids for s in eng.generate(PROMPTS, n=1, temperature=0.0, max_tokens=8)]

    def full():
        return [[(s.token_ids, s.logprobs) for s in o] for o in eng.generate(PROMPTS, n=2, max_tokens=8, seed=5)]

    res = {"greedy_before": greedy(), "hf_greedy_before": hf_greedy(), "before_full": full()}
    orig = load_file(f"{ckpt}/model.safetensors")
    g = torch.Generator().manual_seed(7)
    new = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in orig.items()}
    refit(eng, RefitPlan.for_engine(eng, specs_of(new.items()), bucket_bytes=256 << 10), iter(new.items()))
    hf.load_state_dict(new, strict=False)
    res["greedy_after"], res["hf_greedy_after"] = greedy(), hf_greedy()
    seqs = [p + s for p, s in zip(PROMPTS, res["greedy_after"])]
    with torch.no_grad():
        lps = [torch.log_softmax(hf(torch.tensor([q])).logits[0, :-1].double(), -1)
               .gather(-1, torch.tensor(q[1:])[:, None])[:, 0] for q in seqs]
    res["gap_after"] = verify_refit(eng, seqs, lps)
    refit(eng, RefitPlan.for_engine(eng, specs_of(orig.items()), bucket_bytes=0), iter(orig.items()))
    res["restored"] = full()
    from vllm.distributed import get_tensor_model_parallel_world_size

    res["tp_size"] = get_tensor_model_parallel_world_size()
    w = orig["model.layers.0.self_attn.q_proj.weight"]
    kv = orig["model.layers.0.self_attn.k_proj.weight"].shape[0]
    res["full_shapes"] = [w.shape[0] + 2 * kv, w.shape[1]]  # the fused qkv_proj of the whole model
    res["shard_shapes"] = list(eng.state_dict()["model.layers.0.self_attn.qkv_proj.weight"].shape)
    try:  # every TP rank must pass the same batch: a mismatch is an error on every rank
        eng.generate([PROMPTS[rank]], n=1, temperature=0.0, max_tokens=2)
        res["mismatch_error"] = ""
    except ValueError as e:
        res["mismatch_error"] = str(e)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))
    eng.close()


if __name__ == "__main__":
    _rank_main(sys.argv[1], sys.argv[2])
