"""The LM-head-fused RED loss (kernels/lm_head_loss.py) against its reference, single process.

Both backends: "triton" (kernels/red_loss.py's passes, TRITON_INTERPRET=1 on the CPU) and "torch".
The reference is the head as one matmul in the op's dtype (so both sides see the same rounded
logits), then red_loss_reference in float64; dL/dhidden and dL/dweight follow from its dL/dlogits
in float64. Small shapes (37 tokens x 1,000 columns x D=24), chunks that do not divide N.
"""
from __future__ import annotations

import pytest
import torch

from kernels import KINDS, red_loss_reference
from kernels.lm_head_loss import backward_tiles, chunk_rows, extra_bytes, lm_head_logprob_entropy, lm_head_red_loss
from kernels.lm_head_loss_reference import lm_head_logits, lm_head_red_loss_reference
from kernels.red_loss_reference import logprob_entropy as ref_logprob_entropy
from tests.test_kernel_red_loss import DEVICE, TOL, make_inputs, rel

BACKENDS = ["torch", "triton"]
D = 24


def make_head(n=37, v=1000, *, vocab_size=990, dtype=torch.float32, seed=0, temperature=0.7, ties=False):
    """(hidden, weight, target, per-token terms); with ``ties`` three identical weight rows hold the
    row maximum of every token (one in each half of the vocabulary) and some tokens target them."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, D, generator=g)
    w = torch.randn(v, D, generator=g) * 0.6
    if ties:
        h = h.abs() + 0.1
        w[[7, 300, 600]] = 1.5  # logit 1.5·Σh, above every random row's
    h, w = h.to(dtype), w.to(dtype)
    logits = lm_head_logits(h, w).double()
    _, target, per = make_inputs(n=n, v=v, vocab_size=vocab_size, seed=seed + 100, temperature=temperature)
    if ties:
        target[::3] = torch.tensor([7, 300, 600]).repeat(n)[: len(target[::3])]
    with torch.no_grad():  # logp_old / ref near the true log-probs, so some ratios clip
        lp = torch.log_softmax(logits[:, :vocab_size] / temperature, -1).gather(1, target[:, None]).squeeze(1)
        per["logp_old_N"] = (lp + 0.3 * torch.sin(torch.arange(n) * 1.7)).float()
        per["ref_logp_N"] = (lp + 0.2 * torch.cos(torch.arange(n) * 0.9)).float()
    to = lambda t: t.to(DEVICE)  # noqa: E731
    return to(h), to(w), to(target), {k: to(t) for k, t in per.items()}


def run_op(h, w, target, per, *, extra_ent_grad=None, **kw):
    hx, wx = h.clone().requires_grad_(), w.clone().requires_grad_()
    out = lm_head_red_loss(hx, wx, target, **per, **kw)
    obj = out.loss if extra_ent_grad is None else out.loss + (out.entropy_N * extra_ent_grad).sum()
    gh, gw = torch.autograd.grad(obj, [hx, wx])
    return out, gh, gw


def run_ref(h, w, target, per, *, fp32_matmul=False, extra_ent_grad=None, **kw):
    """float64 reference on the op's rounded logits; (output, dL/dh, dL/dW) in float64."""
    kw = {k: v for k, v in kw.items() if k not in ("backend", "chunk_tokens", "vocab_block")}
    x = lm_head_logits(h, w, fp32_matmul).double().requires_grad_()
    p64 = {k: (t.double() if t is not None and t.dtype.is_floating_point else t) for k, t in per.items()}
    out = red_loss_reference(x, target, **p64, **kw)
    obj = out.loss if extra_ent_grad is None else out.loss + (out.entropy_N * extra_ent_grad.double()).sum()
    (g,) = torch.autograd.grad(obj, x)
    return out, g @ w.double(), g.t() @ h.double()


def check(out, gh, gw, ref, rgh, rgw, dtype, label=""):
    tol = TOL[dtype]
    for name in ("logp_N", "entropy_N"):
        a, b = getattr(out, name).detach().double(), getattr(ref, name).detach()
        err = float((a - b).abs().max() / (1.0 + b.abs().max()))
        assert err < tol["tok"], f"{label}{name}: max error {err:.3g}"
    # relative, but not to a loss that nearly cancels (one kind alone: a signed sum of ~1e-2 terms)
    assert abs(float(out.loss) - float(ref.loss)) < tol["loss"] * max(1e-2, abs(float(ref.loss))), label
    assert abs(float(out.clip_frac) - float(ref.clip_frac)) < 1e-6, f"{label}clip_frac"
    assert gh.dtype == dtype and gw.dtype == dtype
    for name, a, b in (("dL/dhidden", gh, rgh), ("dL/dweight", gw, rgw)):
        assert torch.isfinite(a).all(), f"{label}{name} not finite"
        assert rel(a, b) < tol["grad"], f"{label}{name}: rel error {rel(a, b):.3g} (tol {tol['grad']})"


CASES = {  # dtype, temperature, options (vocab_block: the backward in blocks of weight rows, the last one ragged)
    "fp32_T0.7_entropy_kl": (torch.float32, 0.7, dict(entropy_coef=0.05, kl_coef=0.1)),
    "bf16_T1.0_blocks": (torch.bfloat16, 1.0, dict(vocab_block=300)),
    "bf16_T1.6_clip_higher": (torch.bfloat16, 1.6, dict(eps_hi=0.28, entropy_coef=0.02)),
    "fp32_T0.4_luffy_blocks": (torch.float32, 0.4, dict(luffy_gamma=0.3, vocab_block=256)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(backend, case):
    dtype, temp, opts = CASES[case]
    h, w, target, per = make_head(dtype=dtype, seed=len(case), temperature=temp)
    kw = dict(vocab_start=0, vocab_size=990, temperature=temp, **opts)
    out, gh, gw = run_op(h, w, target, per, backend=backend, chunk_tokens=10, **kw)
    ref, rgh, rgw = run_ref(h, w, target, per, **kw)
    assert set(per["kind_N"].tolist()) == set(range(len(KINDS))) and (per["weight_N"] == 0).any()  # DPO too
    assert 0 < float(ref.clip_frac) < 1
    check(out, gh, gw, ref, rgh, rgw, dtype, f"{backend} {case}: ")
    assert torch.equal(gw[990:], torch.zeros_like(gw[990:])), "padding rows of the weight get no gradient"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", [0, 1, 2, 3])
def test_each_kind_alone(backend, kind):
    h, w, target, per = make_head(n=19, seed=40 + kind)
    per["kind_N"] = torch.full_like(per["kind_N"], kind)
    kw = dict(vocab_start=0, vocab_size=990, temperature=0.7)
    out, gh, gw = run_op(h, w, target, per, backend=backend, chunk_tokens=8, **kw)
    check(out, gh, gw, *run_ref(h, w, target, per, **kw), torch.float32, f"{backend} kind {kind}: ")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ties_in_the_max(backend, dtype):
    h, w, target, per = make_head(dtype=dtype, seed=50, ties=True)
    x = lm_head_logits(h, w).float()
    top2 = x.topk(2, dim=1).values
    assert torch.equal(top2[:, 0], top2[:, 1]) and torch.equal(x.argmax(1) % 1000, torch.full((37,), 7))
    kw = dict(vocab_start=0, vocab_size=990, temperature=0.9, entropy_coef=0.03)
    out, gh, gw = run_op(h, w, target, per, backend=backend, chunk_tokens=16, **kw)
    check(out, gh, gw, *run_ref(h, w, target, per, **kw), dtype, f"{backend} ties: ")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_matmul_on_bf16_operands(backend):
    """policy.lm_head_fp32: logits from the bf16 values in fp32; gradients back in bf16."""
    h, w, target, per = make_head(dtype=torch.bfloat16, seed=60)
    kw = dict(vocab_start=0, vocab_size=990, temperature=0.7)
    out, gh, gw = run_op(h, w, target, per, backend=backend, fp32_matmul=True, chunk_tokens=12, **kw)
    ref, rgh, rgw = run_ref(h, w, target, per, fp32_matmul=True, **kw)
    check(out, gh, gw, ref, rgh, rgw, torch.bfloat16, f"{backend} fp32_matmul: ")
    assert float((out.logp_N.double() - ref.logp_N).abs().max()) < 1e-5  # fp32 logits, not bf16-rounded ones
    bf, _, _ = run_op(h, w, target, per, backend=backend, chunk_tokens=12, **kw)
    assert float((bf.logp_N.double() - ref.logp_N).abs().max()) > 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_output_gradient_and_on_policy(backend):
    """entropy_N carries its own exact gradient (entropy_coef != 0); logp_old_N=None is the forward's
    own log-prob (r = 1): the same as passing those log-probs, bit for bit."""
    h, w, target, per = make_head(seed=70)
    kw = dict(vocab_start=0, vocab_size=990, temperature=0.7, entropy_coef=0.1, backend=backend, chunk_tokens=9)
    extra = torch.randn(37, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    out, gh, gw = run_op(h, w, target, per, extra_ent_grad=extra, **kw)
    assert out.entropy_N.requires_grad and not out.logp_N.requires_grad
    check(out, gh, gw, *run_ref(h, w, target, per, extra_ent_grad=extra, **kw), torch.float32)
    on, gh_on, gw_on = run_op(h, w, target, dict(per, logp_old_N=None), **kw)
    lp, _ = lm_head_logprob_entropy(h, w, target, vocab_start=0, vocab_size=990, temperature=0.7, backend=backend,
                                    chunk_tokens=9)
    with_pass, gh_p, gw_p = run_op(h, w, target, dict(per, logp_old_N=lp), **kw)
    assert torch.equal(on.loss, with_pass.loss) and torch.equal(gh_on, gh_p) and torch.equal(gw_on, gw_p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logprob_entropy_and_the_reference_module(backend):
    h, w, target, per = make_head(dtype=torch.bfloat16, seed=80)
    kw = dict(vocab_start=0, vocab_size=990, temperature=0.6)
    lp, ent = lm_head_logprob_entropy(h, w, target, backend=backend, chunk_tokens=7, **kw)
    lpr, entr = ref_logprob_entropy(lm_head_logits(h, w).double(), target, **kw)
    torch.testing.assert_close(lp.double(), lpr, rtol=0, atol=2e-5)
    torch.testing.assert_close(ent.double(), entr, rtol=0, atol=2e-5)
    # the reference module end to end in float64: autograd through F.linear gives the same gradients
    h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
    p64 = {k: (t.double() if t.dtype.is_floating_point else t) for k, t in per.items()}
    ref = lm_head_red_loss_reference(h64, w64, target, **p64, **kw)
    gh, gw = torch.autograd.grad(ref.loss, [h64, w64])
    ref2, rgh, rgw = run_ref(h.double(), w.double(), target, per, **kw)
    assert rel(gh, rgh) < 1e-12 and rel(gw, rgw) < 1e-12 and float(ref.loss) == pytest.approx(float(ref2.loss))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_and_chunk_size_independent(backend):
    h, w, target, per = make_head(dtype=torch.bfloat16, seed=90)
    kw = dict(vocab_start=0, vocab_size=990, temperature=0.7, entropy_coef=0.01, backend=backend)
    a = run_op(h, w, target, per, chunk_tokens=8, **kw)
    b = run_op(h, w, target, per, chunk_tokens=8, **kw)
    assert torch.equal(a[0].loss, b[0].loss) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    c = run_op(h, w, target, per, chunk_tokens=1000, **kw)  # one chunk
    assert torch.equal(a[0].logp_N, c[0].logp_N) and rel(a[2], c[2]) < 1e-2


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest storage any torch op's output lives in (the [N, V] logits would be one;
    a zero-stride expanded view is not)."""

    def __init__(self):
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.nbytes = max(self.nbytes, t.untyped_storage().nbytes())
        return out


def test_no_tensor_larger_than_a_chunk_of_logits():
    """torch backend, forward + backward: nothing bigger than chunk x V_local is ever allocated."""
    n, v, chunk = 96, 1000, 32
    h, w, target, per = make_head(n=n, v=v, seed=95)
    hx, wx = h.clone().requires_grad_(), w.clone().requires_grad_()
    with _LargestTensor() as mode:
        out = lm_head_red_loss(hx, wx, target, **per, vocab_start=0, vocab_size=990, temperature=0.7,
                               backend="torch", chunk_tokens=chunk)
        out.loss.backward()
    assert mode.nbytes == 4 * chunk * v > 4 * v * D, mode.nbytes  # one chunk's fp32 logits (> dW [V, D] here)
    assert hx.grad is not None and wx.grad is not None
    with _LargestTensor() as seen:  # the probe does see logits where they exist: the unfused reference
        ref = lm_head_red_loss_reference(hx, wx, target, **per, vocab_start=0, vocab_size=990, temperature=0.7)
        ref.loss.backward()
    assert seen.nbytes >= 4 * n * v


def test_chunk_rows_and_bad_inputs():
    assert chunk_rows(10**6, 151936, 2) == 768 and chunk_rows(10**6, 151936 // 8, 2) == 7040
    assert chunk_rows(10, 1000, 4, 64) == 64
    # the backward's tiles at the 1.5B head: 4 blocks of weight rows, each block's fp32 dW <= 256 MiB
    assert backward_tiles(16384, 151936, 1536, 2, False) == (38016, 3456)
    assert backward_tiles(16384, 151936, 1536, 4, True) == (151936, 384)  # an fp32 weight: one block
    for d in (1536, 3584):  # well under the 4.64 GiB of logits at N=16,384
        assert extra_bytes(16384, d, 151936) < 0.8 * 2**30
    h, w, target, per = make_head(n=5, v=64, vocab_size=64)
    kw = dict(vocab_start=0, vocab_size=64, temperature=1.0)
    with pytest.raises(ValueError, match="weight_VD"):
        lm_head_red_loss(h, w[:, :10], target, **per, **kw)
    with pytest.raises(ValueError, match="weight_VD: expected the dtype"):
        lm_head_red_loss(h, w.bfloat16(), target, **per, **kw)
    with pytest.raises(ValueError, match="backend"):
        lm_head_red_loss(h, w, target, **per, backend="cuda", **kw)
    with pytest.raises(ValueError, match="chunk_tokens"):
        lm_head_red_loss(h, w, target, **per, chunk_tokens=0, **kw)
    with pytest.raises(ValueError, match="vocab_block"):
        lm_head_red_loss(h, w, target, **per, vocab_block=0, **kw)
    with pytest.raises(ValueError, match="target_N"):
        lm_head_red_loss(h, w, target[:3], **per, **kw)
    with pytest.raises(ValueError, match="adv_N"):
        lm_head_red_loss(h, w, target, **{**per, "adv_N": per["adv_N"][:2]}, **kw)
    with pytest.raises(ValueError, match="ref_logp_N"):
        lm_head_red_loss(h, w, target, **{**per, "ref_logp_N": None}, **dict(kw, kl_coef=0.1))
