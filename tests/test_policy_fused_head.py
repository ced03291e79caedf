"""policy.fused_lm_head: the LM head inside the loss gives the RED step of the unfused policy.

Each job builds the same HF checkpoint twice on the 2-rank gloo pool (weights loaded, so identical),
once with the output layer's matmul and once with the head fused into the loss, and runs the step's
two passes: the old-log-prob pass and a RED update (all four token kinds). Compared: per-token
log-probs and entropies, loss, clip fraction, grad norm and every parameter's gradient (main_grad).
Layouts: DP=2, TP=2 + SP, PP=2 (the head on the last stage), CP=2, tied embeddings at PP=1 and PP=2, and
the fp32 LM head on a bf16 model; one Triton (interpreted) run through the schedule.
"""
from __future__ import annotations

import pytest
import torch

from red_megatron.algo import LossParams
from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, hf_policy, red_terms

pytestmark = pytest.mark.dist

LOSS = LossParams(temperature=0.8, entropy_coef=0.01)


def _step(hf_dir, tp, pp, fused, **kw):
    pol = hf_policy(hf_dir, tp=tp, pp=pp, fused_lm_head=fused, loss=LOSS, **kw)
    tokens, prompts = fixed_batch(lengths=(20, 33, 17, 12, 9), prompts=(5, 10, 3, 4, 8))
    n = sum(len(t) - p for t, p in zip(tokens, prompts))
    batch = pol.step_batch(tokens, prompts)
    lp, ent = pol.logprobs_and_entropy(batch)
    out = pol.train_step(batch, terms=red_terms(n, seed=2), logp_old_N=lp + 0.5 * torch.sin(torch.arange(n)))
    grads = {name: p.main_grad.detach().float().clone() for c in pol.ddp for name, p in c.module.named_parameters()}
    head = pol.chunks[0].output_layer if pol.groups.is_last_stage else None
    return dict(lp=lp, ent=ent, loss=out["loss"], clip=out["clip_frac"], gn=out["grad_norm"], grads=grads,
                head_out_is_hidden=head is not None and head.forward.__name__ == "forward_hidden")


def _job(hf_dir: str, tp: int, pp: int, overrides: dict):
    with megatron_parallel(tp=tp, pp=pp, seed=7, cp=overrides.get("cp", 1)):
        return _step(hf_dir, tp, pp, False, **overrides), _step(hf_dir, tp, pp, True, **overrides)


def _compare(results, *, tol):
    for plain, fused in results:
        assert not plain["head_out_is_hidden"]
        torch.testing.assert_close(fused["lp"], plain["lp"], rtol=0, atol=tol)
        torch.testing.assert_close(fused["ent"], plain["ent"], rtol=0, atol=tol)
        assert fused["loss"] == pytest.approx(plain["loss"], rel=tol, abs=tol)
        assert fused["clip"] == pytest.approx(plain["clip"], abs=1e-6) and 0 < plain["clip"] < 1
        assert fused["gn"] == pytest.approx(plain["gn"], rel=tol) and plain["gn"] > 0
        assert fused["grads"].keys() == plain["grads"].keys()
        for name, g in plain["grads"].items():
            err = float((fused["grads"][name] - g).norm() / g.norm().clamp(min=1e-30))
            assert err < 10 * tol, f"{name}: gradient rel error {err:.3g}"
    assert any(f["head_out_is_hidden"] for _, f in results)  # the last stage's head really was skipped


LAYOUTS = {
    "dp2": (1, 1, {}),
    "tp2_sp": (2, 1, {"sequence_parallel": True}),
    "pp2": (1, 2, {}),
    "cp2": (1, 1, {"cp": 2}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fused_head_step_equals_unfused(dist2, tiny_ckpt_dir, layout):
    tp, pp, over = LAYOUTS[layout]
    _compare(dist2.run(_job, str(tiny_ckpt_dir), tp, pp, over), tol=2e-5)


@pytest.fixture(scope="module")
def tied_ckpt_dir(tmp_path_factory):
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    out = tmp_path_factory.mktemp("tiny_qwen2_tied")
    make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=0, tie_word_embeddings=True), out)
    return out


@pytest.mark.parametrize("pp", [1, 2])
def test_fused_head_with_tied_embeddings(dist2, tied_ckpt_dir, pp):
    """The head's weight is the embedding (PP=1) or the last stage's copy of it (PP=2)."""
    _compare(dist2.run(_job, str(tied_ckpt_dir), 1, pp, {}), tol=2e-5)


def test_fused_head_keeps_the_fp32_lm_head(dist2, tiny_ckpt_dir):
    """bf16 model, policy.lm_head_fp32: the fused chunks' matmul on fp32 operands gives the fp32 head's
    log-probs (to fp32 rounding), and differs from the fused bf16 head by more than that."""
    res = dist2.run(_job, str(tiny_ckpt_dir), 1, 1, {"dtype": "bfloat16", "lm_head_fp32": True})
    _compare(res, tol=2e-4)  # bf16 layers: the backward's bf16 arithmetic bounds the gradients' agreement
    bf16 = dist2.run(_job, str(tiny_ckpt_dir), 1, 1, {"dtype": "bfloat16"})
    gap_fp32 = float((res[0][1]["lp"] - res[0][0]["lp"]).abs().max())
    gap_bf16 = float((bf16[0][1]["lp"] - res[0][0]["lp"]).abs().max())
    assert gap_fp32 < 1e-5 < gap_bf16, (gap_fp32, gap_bf16)


def test_fused_head_triton_through_the_schedule(dist2, tiny_ckpt_dir):
    """loss_impl='kernel': the Triton passes (interpreted here) inside the fused head, TP=2 + SP."""
    _compare(dist2.run(_job, str(tiny_ckpt_dir), 2, 1, {"loss_impl": "kernel", "sequence_parallel": True,
                                                        "grad_in_forward": True}), tol=2e-5)


def test_the_field_is_a_bool():
    from red_megatron.policy.config import PolicyConfig

    assert PolicyConfig().fused_lm_head is False  # off by default: the golden traces are the unfused head's
    with pytest.raises(ValueError, match="fused_lm_head"):
        PolicyConfig(fused_lm_head="yes")
