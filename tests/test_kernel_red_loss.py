"""The fused Triton RED loss (kernels/red_loss.py) against the float64 reference, single process.

On the CPU these run under TRITON_INTERPRET=1 (set by conftest.py), at small shapes: 37 tokens ×
1,000 vocabulary, which is not a multiple of the CPU block (512). Every check compares with
`red_loss_reference` evaluated in float64 on the very same (dtype-rounded) logits, so the
tolerances only have to absorb the kernel's fp32 arithmetic and the rounding of the gradient to
the logits dtype.
"""
from __future__ import annotations

import pytest
import torch

from kernels import KINDS, red_loss, red_loss_reference
from kernels.red_loss import logprob_entropy
from kernels.red_loss_reference import logprob_entropy as ref_logprob_entropy

# CPU (the interpreter) in CI; the same file runs on a GPU machine with real Triton kernels.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# per-dtype tolerances: per-token values are fp32 math on exact inputs; the gradient is rounded to the dtype
TOL = {torch.float32: dict(tok=2e-5, loss=2e-5, grad=2e-5),
       torch.bfloat16: dict(tok=2e-5, loss=2e-5, grad=8e-3),
       torch.float16: dict(tok=2e-5, loss=2e-5, grad=1.5e-3)}


def make_inputs(n=37, v=1000, *, vocab_size=None, dtype=torch.float32, seed=0, scale=3.0, temperature=0.7,
                kinds=KINDS, device=DEVICE):
    """Global (full-vocab) logits and per-token tensors with realistic spreads: ratios near 1 so that
    some online tokens clip, r̄ in {0, 1, random}, a couple of weight-0 tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab_size = v if vocab_size is None else vocab_size
    logits = (torch.randn(n, v, generator=g) * scale).to(dtype)
    target = torch.randint(0, vocab_size, (n,), generator=g)
    with torch.no_grad():
        z = logits.double()[:, :vocab_size] / temperature
        logp = torch.log_softmax(z, -1).gather(1, target[:, None]).squeeze(1)
    kt = torch.tensor(kinds, dtype=torch.int32)
    kind = kt[torch.randint(0, len(kinds), (n,), generator=g)]
    rbar = torch.rand(n, generator=g)
    rbar[::5] = 0.0
    rbar[1::5] = 1.0
    weight = torch.rand(n, generator=g) / n
    weight[2::11] = 0.0
    per = dict(kind_N=kind, adv_N=torch.randn(n, generator=g),
               logp_old_N=(logp + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)).float(),
               rbar_N=rbar, w_N=torch.where(kind == 0, 1.0, 1.0 + 3.0 * torch.rand(n, generator=g)),
               weight_N=weight, ref_logp_N=(logp + 0.2 * torch.randn(n, generator=g, dtype=torch.float64)).float())
    to = lambda t: t.to(device)  # noqa: E731
    return to(logits), to(target), {k: to(t) for k, t in per.items()}


def run_kernel(logits, target, per, *, fn=red_loss, extra_ent_grad=None, **kw):
    """(output, dL/dlogits) — the gradient also includes Σ extra·entropy_N when extra_ent_grad is given."""
    x = logits.detach().clone().requires_grad_()
    out = fn(x, target, kind_N=per["kind_N"], adv_N=per["adv_N"], logp_old_N=per["logp_old_N"],
             rbar_N=per["rbar_N"], w_N=per["w_N"], weight_N=per["weight_N"], ref_logp_N=per["ref_logp_N"], **kw)
    obj = out.loss
    if extra_ent_grad is not None:
        obj = obj + (out.entropy_N * extra_ent_grad.to(out.entropy_N.dtype)).sum()
    (grad,) = torch.autograd.grad(obj, x)
    return out, grad


def run_ref(logits, target, per, **kw):
    """The float64 reference on the same rounded logits."""
    p64 = {k: (t.double() if t is not None and t.dtype.is_floating_point else t) for k, t in per.items()}
    kw = {k: v for k, v in kw.items() if k != "grad_in_forward"}
    return run_kernel(logits.double(), target, p64, fn=red_loss_reference, **kw)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def assert_close(out, grad, ref, gref, dtype, *, label=""):
    tol = TOL[dtype]
    for name in ("logp_N", "entropy_N"):
        a, b = getattr(out, name).double(), getattr(ref, name)
        assert torch.isfinite(a).all(), f"{label}{name} not finite"
        err = float((a - b).abs().max() / (1.0 + b.abs().max()))
        assert err < tol["tok"], f"{label}{name}: max error {err:.3g} (tol {tol['tok']})"
    err = abs(float(out.loss.detach()) - float(ref.loss.detach())) / max(1e-12, abs(float(ref.loss.detach())))
    assert err < tol["loss"], f"{label}loss: {float(out.loss)} vs {float(ref.loss)} (rel {err:.3g})"
    assert abs(float(out.clip_frac) - float(ref.clip_frac)) < 1e-6, f"{label}clip_frac"
    assert grad.dtype == dtype and grad.shape == gref.shape
    assert torch.isfinite(grad).all(), f"{label}grad not finite"
    err = rel(grad, gref)
    assert err < tol["grad"], f"{label}grad: rel error {err:.3g} (tol {tol['grad']})"


def base_kw(vocab_size, temperature=0.7, **kw):
    return dict(vocab_start=0, vocab_size=vocab_size, temperature=temperature, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference(dtype):
    logits, target, per = make_inputs(dtype=dtype, vocab_size=990, seed=1)
    kw = base_kw(990)
    out, grad = run_kernel(logits, target, per, **kw)
    ref, gref = run_ref(logits, target, per, **kw)
    assert out.logp_N.dtype == torch.float32 and out.entropy_N.dtype == torch.float32
    assert not out.entropy_N.requires_grad and not out.logp_N.requires_grad
    assert 0.0 < float(ref.clip_frac) < 1.0, "inputs should clip some online tokens"
    assert_close(out, grad, ref, gref, dtype)


OPTIONS = {
    "entropy_coef": dict(entropy_coef=0.05),
    "kl": dict(kl_coef=0.1),
    "entropy_kl_temperature": dict(entropy_coef=-0.02, kl_coef=0.3, temperature=1.7),
    "grad_in_forward": dict(grad_in_forward=True, entropy_coef=0.05, kl_coef=0.1),
    "clip_higher": dict(eps_lo=0.2, eps_hi=0.28),
    "luffy_gamma": dict(luffy_gamma=0.3),
    "temperature_1": dict(temperature=1.0),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_options(name):
    opts = dict(OPTIONS[name])
    temperature = opts.pop("temperature", 0.7)
    dtype = torch.bfloat16 if name == "grad_in_forward" else torch.float32
    logits, target, per = make_inputs(dtype=dtype, vocab_size=1000, seed=2, temperature=temperature)
    kw = base_kw(1000, temperature=temperature, **opts)
    out, grad = run_kernel(logits, target, per, **kw)
    ref, gref = run_ref(logits, target, per, **kw)
    assert_close(out, grad, ref, gref, dtype, label=f"{name}: ")


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_each_kind_alone(kind):
    logits, target, per = make_inputs(n=19, kinds=(kind,), seed=10 + kind, vocab_size=1000)
    kw = base_kw(1000)
    out, grad = run_kernel(logits, target, per, **kw)
    ref, gref = run_ref(logits, target, per, **kw)
    assert_close(out, grad, ref, gref, torch.float32, label=f"kind {kind}: ")
    if kind != 0:
        assert float(out.clip_frac) == 0.0


def test_entropy_output_carries_exact_gradient():
    """entropy_coef != 0: entropy_N is differentiable and its own gradient is exact too."""
    logits, target, per = make_inputs(seed=3, vocab_size=1000)
    extra = torch.randn(logits.shape[0], generator=torch.Generator().manual_seed(4)).to(DEVICE)
    kw = base_kw(1000, entropy_coef=0.1)
    out, grad = run_kernel(logits, target, per, extra_ent_grad=extra, **kw)
    assert out.entropy_N.requires_grad
    ref, gref = run_ref(logits, target, per, extra_ent_grad=extra, **kw)
    assert_close(out, grad, ref, gref, torch.float32)


def test_grad_in_forward_writes_logits_buffer_and_scales():
    logits, target, per = make_inputs(seed=5, vocab_size=1000)
    kw = base_kw(1000, entropy_coef=0.05)
    _, grad_plain = run_kernel(logits, target, per, **kw)
    x = logits.clone().requires_grad_()
    out = red_loss(x, target, **{k: v for k, v in per.items() if k != "ref_logp_N"}, grad_in_forward=True, **kw)
    assert not torch.equal(x.detach(), logits), "the forward must overwrite the logits with their gradient"
    (g,) = torch.autograd.grad(3.0 * out.loss, x)
    assert g.data_ptr() == x.data_ptr(), "the gradient must live in the logits buffer (no extra [N, V])"
    torch.testing.assert_close(g, 3.0 * grad_plain, rtol=1e-6, atol=1e-12)


def _strided_layout(values_NV: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in a non-contiguous 2-D layout."""
    n, v = values_NV.shape
    if layout == "row-strided":      # stride (2V, 1): e.g. a slice of a wider buffer
        buf = torch.full((n, 2 * v), float("nan"), dtype=values_NV.dtype, device=values_NV.device)
        buf[:, :v] = values_NV
        return buf[:, :v]
    if layout == "col-major":        # stride (1, N)
        return values_NV.t().contiguous().t()
    if layout == "seq-first-slice":  # one batch column of a seq-first [S, B=3, V] buffer: stride (3V, 1)
        buf = torch.full((n, 3, v), float("nan"), dtype=values_NV.dtype, device=values_NV.device)
        buf[:, 1] = values_NV
        return buf[:, 1]
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["row-strided", "col-major", "seq-first-slice"])
def test_strided_views(layout):
    logits, target, per = make_inputs(n=23, seed=6, vocab_size=1000)
    kw = base_kw(1000)
    ref, gref = run_ref(logits, target, per, **kw)
    for gif in (False, True):
        x = _strided_layout(logits, layout).requires_grad_()
        assert not x.is_contiguous()
        out = red_loss(x, target, **{k: v for k, v in per.items() if k != "ref_logp_N"}, grad_in_forward=gif, **kw)
        (g,) = torch.autograd.grad(out.loss, x)
        assert_close(out, g, ref, gref, torch.float32, label=f"{layout} grad_in_forward={gif}: ")


def test_logprob_entropy_matches_reference():
    logits, target, _ = make_inputs(dtype=torch.bfloat16, vocab_size=950, seed=7)
    lp, ent = logprob_entropy(logits, target, vocab_start=0, vocab_size=950, temperature=0.6)
    lpr, entr = ref_logprob_entropy(logits.double(), target, vocab_start=0, vocab_size=950, temperature=0.6)
    torch.testing.assert_close(lp.double(), lpr, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent.double(), entr, rtol=0, atol=2e-5)


def test_deterministic():
    logits, target, per = make_inputs(dtype=torch.bfloat16, seed=8, vocab_size=1000)
    kw = base_kw(1000, entropy_coef=0.01)
    a, ga = run_kernel(logits, target, per, **kw)
    b, gb = run_kernel(logits, target, per, **kw)
    assert torch.equal(a.loss, b.loss) and torch.equal(ga, gb) and torch.equal(a.logp_N, b.logp_N)


def test_bad_inputs_raise_clear_errors():
    logits, target, per = make_inputs(n=5, v=64)
    p = {k: v for k, v in per.items() if k != "ref_logp_N"}
    with pytest.raises(ValueError, match="adv_N"):
        red_loss(logits, target, **{**p, "adv_N": per["adv_N"][:4]}, **base_kw(64))
    with pytest.raises(ValueError, match="target_N"):
        red_loss(logits, target[:3], **p, **base_kw(64))
    with pytest.raises(ValueError, match="temperature"):
        red_loss(logits, target, **p, **base_kw(64, temperature=0.0))
    with pytest.raises(ValueError, match="ref_logp_N"):
        red_loss(logits, target, **p, **base_kw(64, kl_coef=0.1))
    with pytest.raises(ValueError, match="logits_NV"):
        red_loss(logits[0], target, **p, **base_kw(64))


def test_target_outside_real_vocab_is_loud_nan():
    logits, target, per = make_inputs(n=4, v=64, vocab_size=60)
    target = target.clone()
    target[1] = 62  # a padding column: no rank owns it
    lp, _ = logprob_entropy(logits, target, vocab_start=0, vocab_size=60, temperature=1.0)
    assert torch.isnan(lp[1]) and torch.isfinite(lp[[0, 2, 3]]).all()


@pytest.mark.parametrize("fn", [red_loss, red_loss_reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("grad_in_forward", [False, True])
def test_on_policy_old_logp_is_the_forwards_own(fn, grad_in_forward):
    """logp_old_N=None (the trainer without its old-policy pass) gives bit for bit what the same call
    gives with logp_old_N = the detached log-probs of these logits: loss, per-token outputs, clip
    fraction and dL/dlogits."""
    logits, target, per = make_inputs(seed=3, temperature=1.0)
    kw = dict(vocab_start=0, vocab_size=logits.shape[1], temperature=1.0, grad_in_forward=grad_in_forward)
    own = red_loss_reference if fn is red_loss_reference else red_loss
    with torch.no_grad():
        lp = (ref_logprob_entropy if fn is red_loss_reference else logprob_entropy)(
            logits, target, vocab_start=0, vocab_size=logits.shape[1], temperature=1.0)[0]
    with_pass, g_with = run_kernel(logits, target, dict(per, logp_old_N=lp), fn=own, **kw)
    without, g_without = run_kernel(logits, target, dict(per, logp_old_N=None), fn=own, **kw)
    assert torch.equal(with_pass.loss, without.loss)
    assert torch.equal(with_pass.logp_N, without.logp_N) and torch.equal(with_pass.logp_N, lp)
    assert torch.equal(with_pass.entropy_N, without.entropy_N)
    assert torch.equal(g_with, g_without)
    assert float(without.clip_frac) == 0.0 and float(with_pass.clip_frac) == 0.0  # r = 1: nothing clips
    # and the ratio really is the denominator: a different logp_old moves the loss
    shifted, _ = run_kernel(logits, target, dict(per, logp_old_N=lp - 0.5), fn=own, **kw)
    assert not torch.equal(shifted.loss, without.loss)
