"""The kernel's reference (and the kernel) agree with the algorithm module's reference loss.

red_megatron.algo.red_token_loss is the contract written from the algorithm side (per-token
log-probs in, loss out); kernels.red_loss_reference is the same contract written from the logits
side. Feeding the algo function the float64 log_softmax of the same logits must give the same loss,
the same clip fraction and the same logits gradient, for every kind and option.
"""
from __future__ import annotations

import pytest
import torch

from kernels import red_loss, red_loss_reference
from red_megatron.algo import red_token_loss  # the project's own code: an import error fails, never skips
from tests.test_kernel_red_loss import DEVICE, make_inputs, rel

CASES = {
    "defaults": dict(),
    "entropy_kl": dict(entropy_coef=0.03, kl_coef=0.2),
    "clip_higher_luffy_gamma": dict(eps_lo=0.2, eps_hi=0.28, luffy_gamma=0.3),
}


def _algo_loss(logits64, target, per, *, temperature, vocab_size, **opts):
    logp_all = torch.log_softmax(logits64[:, :vocab_size] / temperature, dim=-1)
    logp = logp_all.gather(1, target[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    p = {k: (t.double() if t.dtype.is_floating_point else t) for k, t in per.items()}
    out = red_token_loss(logp, p["logp_old_N"], entropy, p["kind_N"], p["adv_N"], p["rbar_N"], p["w_N"],
                         p["weight_N"], ref_logp_N=p["ref_logp_N"], **opts)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_reference_and_kernel_agree_with_algo_loss(case):
    opts = CASES[case]
    temperature, vocab_size = 0.8, 990
    logits, target, per = make_inputs(seed=40, vocab_size=vocab_size, temperature=temperature)
    kw = dict(vocab_start=0, vocab_size=vocab_size, temperature=temperature, **opts)

    x_algo = logits.double().requires_grad_()
    algo = _algo_loss(x_algo, target, per, temperature=temperature, vocab_size=vocab_size, **opts)
    (g_algo,) = torch.autograd.grad(algo.loss, x_algo)

    x_ref = logits.double().requires_grad_()
    p64 = {k: (t.double() if t.dtype.is_floating_point else t) for k, t in per.items()}
    ref = red_loss_reference(x_ref, target, **p64, **kw)
    (g_ref,) = torch.autograd.grad(ref.loss, x_ref)

    assert abs(float(ref.loss) - float(algo.loss)) < 1e-10 * max(1.0, abs(float(algo.loss)))
    assert abs(float(ref.clip_frac) - float(algo.clip_frac)) < 1e-7
    assert rel(g_ref, g_algo) < 1e-10

    x = logits.clone().requires_grad_()
    out = red_loss(x, target, **per, **kw)
    (g,) = torch.autograd.grad(out.loss, x)
    assert abs(float(out.loss.detach()) - float(algo.loss)) < 2e-5 * abs(float(algo.loss))
    assert abs(float(out.clip_frac) - float(algo.clip_frac)) < 1e-6
    assert rel(g, g_algo) < 2e-5


def test_presets_kinds_map_onto_kernel_kinds():
    """The algo's TokenKind values are the kernel's kind codes."""
    from red_megatron.algo import TokenKind

    from kernels import DPO, NLL, OFFLINE_LUFFY, OFFLINE_SHIFT, ONLINE
    assert (int(TokenKind.ONLINE), int(TokenKind.OFFLINE_SHIFT), int(TokenKind.OFFLINE_LUFFY),
            int(TokenKind.NLL), int(TokenKind.DPO)) == (ONLINE, OFFLINE_SHIFT, OFFLINE_LUFFY, NLL, DPO)
    assert DEVICE in ("cpu", "cuda")
