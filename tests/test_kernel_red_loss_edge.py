"""Known failure modes of other projects' fused log-prob/entropy kernels (issue 4, item 4).

Each test builds the input that broke someone else's kernel and checks the fused RED loss
against the float64 reference (or against an invariant where the reference itself would break).
"""
from __future__ import annotations

import pytest
import torch

from kernels import red_loss
from kernels.red_loss import logprob_entropy
from tests.test_kernel_red_loss import DEVICE, assert_close, base_kw, make_inputs, rel, run_kernel, run_ref


def _no_ref(per):
    return {k: v for k, v in per.items() if k != "ref_logp_N"}


def _recalibrate(per, logits, target, temperature):
    """logp_old / ref_logp near the true log-probs of (modified) logits, so ratios stay sane."""
    g = torch.Generator().manual_seed(99)
    lp = torch.log_softmax(logits.double() / temperature, -1).gather(1, target[:, None]).squeeze(1).cpu()
    n = lp.shape[0]
    per = dict(per)
    per["logp_old_N"] = (lp + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).float().to(logits.device)
    per["ref_logp_N"] = (lp + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)).float().to(logits.device)
    return per


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logp_never_positive_entropy_never_negative(dtype):
    """Peaked rows (logp -> 0, H -> 0), exactly uniform rows (H = log V) and wide logits."""
    n, v = 24, 700
    g = torch.Generator().manual_seed(20)
    x = torch.randn(n, v, generator=g) * 8.0
    target = torch.randint(0, v, (n,), generator=g)
    x[:8, :] = -30.0
    x[torch.arange(8), target[:8]] = 60.0   # one dominant logit: logp and H round to 0
    x[8:12, :] = 1.5                        # uniform: H = log V, logp = -log V
    x = x.to(dtype).to(DEVICE)
    target = target.to(DEVICE)
    for temperature in (0.3, 1.0, 2.5):
        lp, ent = logprob_entropy(x, target, vocab_start=0, vocab_size=v, temperature=temperature)
        assert (lp <= 0).all(), f"logp > 0 at T={temperature}: {lp.max()}"
        assert (ent >= 0).all(), f"entropy < 0 at T={temperature}: {ent.min()}"
        logv = torch.log(torch.tensor(float(v)))
        torch.testing.assert_close(ent[8:12].cpu(), logv.expand(4), rtol=0, atol=1e-5)
        torch.testing.assert_close(lp[8:12].cpu(), -logv.expand(4), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_negative_logits_max_starts_at_minus_inf(dtype):
    """Logits around -1e4: a max initialised at 0 makes every exp underflow (s = 0, logp = +inf)."""
    logits, target, per = make_inputs(n=13, v=600, dtype=torch.float32, seed=21)
    logits = (logits - 1e4).to(dtype)
    per = _recalibrate(per, logits, target, 0.7)
    kw = base_kw(600, entropy_coef=0.05, kl_coef=0.1)
    out, grad = run_kernel(logits, target, per, **kw)
    ref, gref = run_ref(logits, target, per, **kw)
    assert_close(out, grad, ref, gref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_plus_minus_1e4(dtype):
    """±1e4 logits (ties at the max, π underflowing to 0 for most targets, r̄ = 0 offline tokens)."""
    logits, target, per = make_inputs(n=21, v=600, dtype=torch.float32, seed=22)
    logits = (1e4 * torch.sign(logits) + logits).to(dtype)
    per = _recalibrate(per, logits, target, 0.7)
    kw = base_kw(600, temperature=0.7, entropy_coef=0.01, kl_coef=0.1)
    out, grad = run_kernel(logits, target, per, **kw)
    ref, gref = run_ref(logits, target, per, **kw)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    assert (out.logp_N <= 0).all() and (out.entropy_N >= 0).all()
    assert (out.logp_N < -1e4).sum() > 5, "most targets sit 2e4 below the max"
    # logp ~ -3e4 for most tokens: fp32 spacing there is 2e-3, hence a relative tolerance
    torch.testing.assert_close(out.logp_N.double(), ref.logp_N, rtol=2e-7, atol=2e-5)
    torch.testing.assert_close(out.entropy_N.double(), ref.entropy_N, rtol=0, atol=2e-5)
    assert abs(float(out.loss.detach()) - float(ref.loss.detach())) <= 2e-5 * abs(float(ref.loss.detach()))
    # the ratio exp(logp - logp_old) turns fp32's 2e-3 spacing at |logp| ~ 3e4 into ~1e-4 relative
    assert rel(grad, gref) < (1e-3 if dtype == torch.float32 else 1e-2)


def test_padded_blocks_are_never_read():
    """V_local = 1,200 with vocab_size = 300: the CPU blocks [512, 1024) and [1024, 1200) are all
    padding. Padding columns hold NaN here: a kernel that reads them (instead of treating them as
    -inf) poisons every output. Their gradient must be exactly 0."""
    logits, target, per = make_inputs(n=17, v=1200, vocab_size=300, seed=23)
    poisoned = logits.clone()
    poisoned[:, 300:] = float("nan")
    for gif in (False, True):
        kw = base_kw(300, entropy_coef=0.02, grad_in_forward=gif)
        out, grad = run_kernel(poisoned, target, per, **kw)
        ref, gref = run_ref(logits, target, per, **kw)
        assert_close(out, grad, ref, gref, torch.float32, label=f"gif={gif}: ")
        assert torch.equal(grad[:, 300:], torch.zeros_like(grad[:, 300:]))


def test_minus_inf_logits_in_real_columns():
    """A model that masks tokens with -inf (a whole block of real columns): p = 0 and grad 0 there,
    same as a hugely negative finite logit (which the reference can handle)."""
    logits, target, per = make_inputs(n=11, v=1000, seed=24)
    target = target % 500
    masked = logits.clone()
    masked[:, 512:] = float("-inf")
    finite = logits.clone()
    finite[:, 512:] = -1e30
    kw = base_kw(1000, entropy_coef=0.03)
    out, grad = run_kernel(masked, target, per, **kw)
    ref, gref = run_ref(finite, target, per, **kw)
    assert_close(out, grad, ref, gref, torch.float32)
    assert torch.equal(grad[:, 512:], torch.zeros_like(grad[:, 512:]))


def test_single_token():
    logits, target, per = make_inputs(n=1, v=1000, seed=25, kinds=(0,))
    per["weight_N"] = torch.ones_like(per["weight_N"])
    kw = base_kw(1000, entropy_coef=0.01)
    out, grad = run_kernel(logits, target, per, **kw)
    ref, gref = run_ref(logits, target, per, **kw)
    assert out.logp_N.shape == (1,) and grad.shape == (1, 1000)
    assert_close(out, grad, ref, gref, torch.float32)


def test_masked_tokens_contribute_nothing_and_get_exactly_zero_grad():
    """weight 0 with garbage elsewhere (ratio overflow to inf, huge advantages, NaN-free but absurd):
    the loss equals the loss over the live tokens alone and the masked rows' gradient is exactly 0."""
    logits, target, per = make_inputs(n=29, v=1000, seed=26)
    dead = torch.zeros(29, dtype=torch.bool, device=logits.device)
    dead[::3] = True
    per["weight_N"] = torch.where(dead, 0.0, per["weight_N"].clamp(min=1e-3))
    per["logp_old_N"] = torch.where(dead, -1e4, per["logp_old_N"])  # r = exp(1e4 - ...) = inf
    per["adv_N"] = torch.where(dead, 1e30, per["adv_N"])
    per["ref_logp_N"] = torch.where(dead, 1e4, per["ref_logp_N"])
    for gif in (False, True):
        kw = base_kw(1000, entropy_coef=0.05, kl_coef=0.1, grad_in_forward=gif)
        out, grad = run_kernel(logits, target, per, **kw)
        assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
        assert (grad[dead] == 0).all(), "masked rows must get exactly zero gradient"
        live = ~dead
        ref, gref = run_ref(logits[live], target[live], {k: t[live] for k, t in per.items()}, **kw)
        assert abs(float(out.loss.detach()) - float(ref.loss.detach())) < 2e-5 * abs(float(ref.loss.detach()))
        assert rel(grad[live], gref) < 2e-5
        assert abs(float(out.clip_frac) - float(ref.clip_frac)) < 1e-6


def test_tied_embeddings():
    """Logits from a weight shared with the input embedding: W gets both gradients, and they match
    the reference (a kernel that mangled the logits' grad layout or dtype breaks this)."""
    g = torch.Generator().manual_seed(27)
    v, h, n = 700, 16, 31
    W0 = torch.randn(v, h, generator=g) * 0.5
    A = torch.randn(h, h, generator=g) / h ** 0.5
    ids = torch.randint(0, v, (n,), generator=g)
    _, target, per = make_inputs(n=n, v=v, seed=28)

    def grads(fn, dtype):
        W = W0.to(dtype).to(DEVICE).clone().requires_grad_()
        hidden = torch.tanh(W[ids.to(DEVICE)] @ A.to(dtype).to(DEVICE))  # embedding lookup with W
        logits = hidden @ W.t()                                           # LM head with the same W
        p = per if dtype != torch.float64 else {k: (t.double() if t.dtype.is_floating_point else t)
                                                 for k, t in per.items()}
        out = fn(logits, target, **_no_ref(p), **base_kw(v, entropy_coef=0.02))
        (gw,) = torch.autograd.grad(out.loss, W)
        return out.loss.detach(), gw

    from kernels import red_loss_reference
    loss_k, gw_k = grads(red_loss, torch.float32)
    loss_r, gw_r = grads(red_loss_reference, torch.float64)
    assert abs(float(loss_k) - float(loss_r)) < 1e-5 * abs(float(loss_r))
    assert rel(gw_k, gw_r) < 1e-5
    # both paths contribute: the gradient differs from the LM-head-only one
    W = W0.to(DEVICE).clone().requires_grad_()
    hidden = torch.tanh(W0.to(DEVICE)[ids.to(DEVICE)] @ A.to(DEVICE))
    out = red_loss(hidden @ W.t(), target, **_no_ref(per), **base_kw(v, entropy_coef=0.02))
    (gw_head,) = torch.autograd.grad(out.loss, W)
    assert rel(gw_head, gw_r) > 1e-3


def test_empty_batch():
    """N = 0 (e.g. a micro-batch without response tokens): zero loss, empty gradient, no launch."""
    logits, target, per = make_inputs(n=3, v=64)
    sl = slice(0, 0)
    x = logits[sl].clone().requires_grad_()
    out = red_loss(x, target[sl], **{k: t[sl] for k, t in _no_ref(per).items()}, **base_kw(64))
    (g,) = torch.autograd.grad(out.loss, x)
    assert float(out.loss.detach()) == 0.0 and float(out.clip_frac) == 0.0 and g.shape == (0, 64)
