"""The policy passes: kernel vs reference loss inside megatron's schedule, parity with HF transformers."""
from __future__ import annotations

import pytest
import torch

from red_megatron.algo import LossParams
from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, hf_policy, red_terms, tiny_policy

pytestmark = pytest.mark.dist


def _job_impl(impl: str):
    with megatron_parallel(tp=2, pp=1, seed=13):
        pol = tiny_policy(tp=2, loss_impl=impl, grad_in_forward=impl == "kernel", loss=LossParams(temperature=0.8))
        tokens, prompts = fixed_batch(lengths=(14, 22, 9), prompts=(4, 6, 2))
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        lp, ent = pol.logprobs_and_entropy(tokens, prompts, 0.8)
        steps = [pol.train_step(tokens, prompts, red_terms(n, seed=s), lp + (0.5 - s))
                 for s in range(2)]
        return lp, ent, [(s["loss"], s["grad_norm"], s["clip_frac"]) for s in steps]


def test_triton_kernel_and_reference_agree_through_the_schedule(dist2):
    """The Triton kernel (interpreted on a CPU) on vocab-parallel TP=2 logits, fed by the passes."""
    ref = dist2.run(_job_impl, "reference")[0]
    ker = dist2.run(_job_impl, "kernel")[0]  # ~5 s under TRITON_INTERPRET
    assert torch.allclose(ref[0], ker[0], atol=1e-5) and torch.allclose(ref[1], ker[1], atol=1e-5)
    for a, b in zip(ref[2], ker[2]):
        assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6) and a[1] == pytest.approx(b[1], rel=1e-4)
        assert a[2] == pytest.approx(b[2], abs=1e-6)
    assert 0 < ref[2][0][2] < 1  # ratios of exp(-0.5) clip the ONLINE tokens with negative advantage


def _job_layouts(hf_dir: str, tp: int, pp: int, pack: bool):
    """Random-weight model from policy-core's build_model (SDPA attention), same seed at every layout."""
    with megatron_parallel(tp=tp, pp=pp, seed=17):
        pol = hf_policy(hf_dir, tp=tp, pp=pp, load_weights=False, pack_sequences=pack, loss=LossParams(temperature=0.8))
        tokens, prompts = fixed_batch(lengths=(20, 33, 17, 12, 9), prompts=(5, 10, 3, 4, 8))
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        lp, ent = pol.logprobs_and_entropy(tokens, prompts, 0.8)
        step = pol.train_step(tokens, prompts, red_terms(n), lp + 0.3)
        return lp, ent, (step["loss"], step["grad_norm"], step["micro_batches"])


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_packed_micro_batches_equal_padded_ones(dist2, tiny_ckpt_dir, tp, pp):
    """Packed THD rows (block-diagonal attention, RoPE restarting per sequence) == right-padded rows."""
    packed = dist2.run(_job_layouts, str(tiny_ckpt_dir), tp, pp, True)
    padded = dist2.run(_job_layouts, str(tiny_ckpt_dir), tp, pp, False)
    for a, b in zip(packed, padded):
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
        assert a[2][0] == pytest.approx(b[2][0], rel=1e-5) and a[2][1] == pytest.approx(b[2][1], rel=1e-5)
    assert packed[0][2][2] < padded[0][2][2]  # packing needs fewer micro-batches for the same budget
    assert torch.equal(packed[0][0], packed[1][0])  # every rank holds the same result


def _job_hf_logprobs(hf_dir: str, tp: int, pp: int, temperature: float):
    with megatron_parallel(tp=tp, pp=pp, seed=19):
        pol = hf_policy(hf_dir, tp=tp, pp=pp, load_weights=True)
        tokens, prompts = fixed_batch(seed=8, lengths=(20, 33, 17, 12), prompts=(5, 10, 3, 4))
        return pol.logprobs_and_entropy(tokens, prompts, temperature)


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_logprob_pass_equals_hf_transformers(dist2, tiny_ckpt_dir, tp, pp):
    from transformers import AutoModelForCausalLM

    temperature = 0.7
    lp, ent = dist2.run(_job_hf_logprobs, str(tiny_ckpt_dir), tp, pp, temperature)[0]
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_ckpt_dir), torch_dtype=torch.float32).eval()
    tokens, prompts = fixed_batch(seed=8, lengths=(20, 33, 17, 12), prompts=(5, 10, 3, 4))
    ref_lp, ref_ent = [], []
    with torch.no_grad():
        for t, p in zip(tokens, prompts):
            logits = hf(input_ids=t.unsqueeze(0)).logits[0].float() / temperature
            logp_all = torch.log_softmax(logits[p - 1:-1], dim=-1)
            ref_lp.append(logp_all.gather(1, t[p:].unsqueeze(1)).squeeze(1))
            ref_ent.append(-(logp_all.exp() * logp_all).sum(-1))
    ref_lp, ref_ent = torch.cat(ref_lp), torch.cat(ref_ent)
    assert lp.shape == ref_lp.shape
    assert (lp - ref_lp).abs().max() < 1e-4, (lp - ref_lp).abs().max()
    assert (ent - ref_ent).abs().max() < 1e-4, (ent - ref_ent).abs().max()


def _job_weights_out(hf_dir: str, out_dir: str):
    with megatron_parallel(tp=2, pp=1, seed=23):
        pol = hf_policy(hf_dir, tp=2, load_weights=True)
        specs = [name for name, _, _ in pol.hf_weight_specs()]
        streamed = {name: t.clone() for name, t in pol.stream_hf_weights()}
        pol.export_hf(out_dir)
        return specs, streamed


def test_weights_out_of_the_policy_equal_the_hf_checkpoint(dist2, tiny_ckpt_dir, tmp_path):
    from safetensors.torch import load_file

    specs, streamed = dist2.run(_job_weights_out, str(tiny_ckpt_dir), str(tmp_path / "hf"))[0]
    ref = load_file(str(tiny_ckpt_dir / "model.safetensors"))
    assert specs == list(streamed) and set(streamed) == set(ref)
    for name, t in ref.items():
        assert torch.equal(streamed[name].float(), t.float()), name
    assert (tmp_path / "hf" / "config.json").is_file()
