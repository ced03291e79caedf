"""Accuracy-aware policy shift (RED part II) at r̄ = 0, 0.5, 1: values and gradients."""
import math

import pytest
import torch

from red_megatron.algo import (
    TokenKind,
    group_accuracy,
    luffy_ratio,
    mixpolicy_ratio,
    onpolicy_ratio,
    red_token_loss,
    shift_ratio,
)

LOGITS = [0.3, -1.2, 2.0, 0.0, 0.7]  # a 5-token vocabulary
TARGET = 1


def _logp(dtype=torch.float64):
    z = torch.tensor(LOGITS, dtype=dtype, requires_grad=True)
    return z, torch.log_softmax(z, -1)[TARGET]


def _grad(fn):
    z, logp = _logp()
    (g,) = torch.autograd.grad(fn(logp, z), z)
    return g


def test_shift_values_hand_computed():
    logp = torch.tensor([math.log(0.25)])
    # r̄ = 0: π/π = 1;  r̄ = 0.5: 0.25/(0.25 + 0.75·0.5) = 0.4;  r̄ = 1: π = 0.25
    assert shift_ratio(logp, torch.tensor([0.0])).item() == pytest.approx(1.0)
    assert shift_ratio(logp, torch.tensor([0.5])).item() == pytest.approx(0.4)
    assert shift_ratio(logp, torch.tensor([1.0])).item() == pytest.approx(0.25)


def test_shift_gradient_at_rbar_0_is_the_nll_gradient():
    g_shift = _grad(lambda logp, z: shift_ratio(logp.reshape(1), torch.zeros(1, dtype=torch.float64)).sum())
    g_nll = _grad(lambda logp, z: logp)  # ∇ log π
    torch.testing.assert_close(g_shift, g_nll)


def test_shift_gradient_at_rbar_1_is_grad_pi():
    g_shift = _grad(lambda logp, z: shift_ratio(logp.reshape(1), torch.ones(1, dtype=torch.float64)).sum())
    g_pi = _grad(lambda logp, z: torch.softmax(z, -1)[TARGET])  # ∇ π
    torch.testing.assert_close(g_shift, g_pi)


def test_shift_gradient_at_rbar_half():
    # d/dθ [π / c] with c = sg(π) + (1 − sg(π))/2 constant: (π/c) ∇log π.
    _, logp = _logp()
    pi = logp.exp().item()
    c = pi + (1 - pi) * 0.5
    g_shift = _grad(lambda logp, z: shift_ratio(logp.reshape(1), torch.full((1,), 0.5, dtype=torch.float64)).sum())
    g_nll = _grad(lambda logp, z: logp)
    torch.testing.assert_close(g_shift, (pi / c) * g_nll)
    assert 0 < pi / c < 1


def test_alternatives_are_the_shift_endpoints():
    z, logp = _logp()
    for rbar, alt in ((1.0, mixpolicy_ratio), (0.0, onpolicy_ratio)):
        a = alt(logp.reshape(1))
        b = shift_ratio(logp.reshape(1), torch.full((1,), rbar, dtype=torch.float64))
        torch.testing.assert_close(a, b)
        (ga,) = torch.autograd.grad(a.sum(), z, retain_graph=True)
        (gb,) = torch.autograd.grad(b.sum(), z, retain_graph=True)
        torch.testing.assert_close(ga, gb)


def test_luffy_shaping_value_and_gradient():
    logp = torch.tensor([math.log(0.25)], dtype=torch.float64, requires_grad=True)
    f = luffy_ratio(logp, 0.1)
    assert f.item() == pytest.approx(0.25 / 0.35)
    (g,) = torch.autograd.grad(f.sum(), logp)
    # d f / d logp = π·γ/(π+γ)² = 0.25·0.1/0.35²
    assert g.item() == pytest.approx(0.025 / 0.35**2)
    with pytest.raises(ValueError, match="gamma"):
        luffy_ratio(logp, 0.0)


def test_token_loss_offline_shift_matches_ratio_functions():
    """red_token_loss's OFFLINE_SHIFT kind reproduces shift_ratio's value and gradient."""
    for rbar in (0.0, 0.5, 1.0):
        z, logp = _logp()
        out = red_token_loss(
            logp.reshape(1), torch.zeros(1, dtype=torch.float64), None,
            torch.tensor([int(TokenKind.OFFLINE_SHIFT)], dtype=torch.int32), torch.tensor([1.0]),
            torch.tensor([rbar]), torch.tensor([1.0]), torch.tensor([1.0]),
        )
        (g_loss,) = torch.autograd.grad(out.loss, z)
        z2, logp2 = _logp()
        r = shift_ratio(logp2.reshape(1), torch.tensor([rbar], dtype=torch.float64)).sum()
        (g_ref,) = torch.autograd.grad(r, z2)
        assert out.loss.item() == pytest.approx(-r.item())
        torch.testing.assert_close(g_loss, -g_ref)


def test_shift_with_underflowed_pi_stays_finite():
    logp = torch.tensor([-800.0, -800.0], dtype=torch.float64, requires_grad=True)  # π = 0 in float64
    out = red_token_loss(
        logp, torch.zeros(2, dtype=torch.float64), None, torch.tensor([1, 1], dtype=torch.int32),
        torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.5]), torch.ones(2), torch.ones(2),
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logp.grad).all()
    assert out.loss.item() == pytest.approx(-1.0)  # r̄ = 0 gives ratio 1 even at π = 0


def test_group_accuracy_online_and_all():
    gid = torch.tensor([0, 0, 0, 1, 1, 1])
    off = torch.tensor([False, False, True, True, False, False])
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert group_accuracy(r, gid, off).tolist() == [0.5, 0.0]  # online only
    torch.testing.assert_close(group_accuracy(r, gid, off, include_offline=True), torch.tensor([2 / 3, 1 / 3]))
    with pytest.raises(ValueError, match="no online sample"):
        group_accuracy(torch.tensor([1.0]), torch.tensor([0]), torch.tensor([True]))
