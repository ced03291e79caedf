"""The per-token RED loss (Eq. 10): aggregation, clipping, extras, gradcheck, shuffle invariance."""
import importlib
import math

import pytest
import torch

from red_megatron.algo import (
    AlgoConfig,
    EntropyStats,
    TokenKind,
    aggregation_weights,
    batch_entropy_stats,
    build_objective,
    build_token_terms,
    group_layout,
    per_token,
    red_token_loss,
    sample_mean_entropy,
)

ON, SHIFT, LUFFY, NLL = (int(TokenKind.ONLINE), int(TokenKind.OFFLINE_SHIFT), int(TokenKind.OFFLINE_LUFFY),
                         int(TokenKind.NLL))


def _loss(logp, kind, adv=None, *, logp_old=None, rbar=None, w=None, weight=None, **kw):
    n = logp.numel()
    ones = torch.ones(n, dtype=torch.float64)
    return red_token_loss(
        logp, logp.detach() if logp_old is None else logp_old, kw.pop("entropy_N", None),
        torch.as_tensor(kind, dtype=torch.int32), ones if adv is None else torch.as_tensor(adv, dtype=torch.float64),
        0 * ones if rbar is None else rbar, ones if w is None else w, ones if weight is None else weight, **kw,
    )


# --- aggregation ---------------------------------------------------------------------------
# One prompt, two online samples of lengths 1 and 3 and a trace of length 2 (group size 3).
LENS = torch.tensor([1, 3, 2])
GID = torch.tensor([0, 0, 0])
LOGP = torch.tensor([-1.0, -2.0, -3.0, -4.0, -0.5, -1.5], dtype=torch.float64)


def test_aggregation_weights_hand_computed():
    seq = aggregation_weights(LENS, GID, aggregation="sequence_mean")
    assert seq.tolist() == pytest.approx([1 / 3, 1 / 9, 1 / 6])  # 1/(|o_i|·3·1)
    tok = aggregation_weights(LENS, GID, aggregation="token_mean")
    assert tok.tolist() == pytest.approx([1 / 6] * 3)
    const = aggregation_weights(LENS, GID, aggregation="constant", loss_constant=4)
    assert const.tolist() == pytest.approx([1 / 12] * 3)  # 1/(C·3·1)
    # A DP caller passes the global counts: weights shrink accordingly.
    assert aggregation_weights(LENS, GID, aggregation="sequence_mean", num_prompts=2).tolist() == pytest.approx([1 / 6, 1 / 18, 1 / 12])
    assert aggregation_weights(LENS, GID, aggregation="token_mean", total_tokens=12).tolist() == pytest.approx([1 / 12] * 3)
    with pytest.raises(ValueError, match="loss_constant"):
        aggregation_weights(LENS, GID, aggregation="constant")
    with pytest.raises(ValueError, match="aggregation"):
        aggregation_weights(LENS, GID, aggregation="mean")


@pytest.mark.parametrize(
    "aggregation, expected",
    [
        # −Σ weight·logp per token: sample sums of −logp are 1, 9, 2.
        ("sequence_mean", 1 / 3 * 1 + 1 / 9 * 9 + 1 / 6 * 2),  # = 5/3
        ("token_mean", (1 + 9 + 2) / 6),  # = 2
        ("constant", (1 + 9 + 2) / 12),  # C = 4, group 3: = 1
    ],
)
def test_each_aggregation_mode_loss(aggregation, expected):
    # Every token scored as NLL (term = logp) isolates the aggregation weights.
    weight_N = per_token(aggregation_weights(LENS, GID, aggregation=aggregation, loss_constant=4), LENS)
    out = _loss(LOGP, [NLL] * 6, weight=weight_N.double())
    assert out.loss.item() == pytest.approx(expected)


def test_token_terms_layout():
    gid, off = group_layout(1, 2, with_offline=True)
    terms = build_token_terms(
        adv_B=torch.tensor([1.0, -1.0, 0.5]), is_offline_B=off, group_id_B=gid, response_len_B=LENS,
        offline_kind=TokenKind.OFFLINE_SHIFT, rbar_G=torch.tensor([0.5]), w=3.0,
    )
    assert terms.kind_N.dtype == torch.int32 and terms.kind_N.tolist() == [ON, ON, ON, ON, SHIFT, SHIFT]
    assert terms.adv_N.tolist() == [1.0, -1.0, -1.0, -1.0, 0.5, 0.5]
    assert terms.rbar_N.tolist() == [0, 0, 0, 0, 0.5, 0.5]
    assert terms.w_N.tolist() == [1, 1, 1, 1, 3, 3]  # w only on offline tokens
    assert terms.is_offline_N.tolist() == [False] * 4 + [True] * 2
    with pytest.raises(ValueError, match="rbar_G"):
        build_token_terms(adv_B=torch.zeros(3), is_offline_B=off, group_id_B=gid, response_len_B=LENS,
                          offline_kind=TokenKind.OFFLINE_SHIFT)
    with pytest.raises(ValueError, match="no offline term"):
        build_token_terms(adv_B=torch.zeros(3), is_offline_B=off, group_id_B=gid, response_len_B=LENS, offline_kind=None)


# --- the online term ------------------------------------------------------------------------
def test_clipped_online_term_and_clip_fraction():
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5], dtype=torch.float64)
    adv = [1.0, -1.0, 1.0, -1.0]
    logp = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    out = _loss(logp, [ON] * 4, adv, logp_old=-ratio.log())
    # min(rA, clip(r)A): 1.2 (clipped), -0.8 (clipped), 0.5, -1.5; weight 1 each
    assert out.loss.item() == pytest.approx(-(1.2 - 0.8 + 0.5 - 1.5))
    assert out.clip_frac.item() == pytest.approx(0.5)
    out.loss.backward()
    # Clipped tokens carry no gradient; unclipped ones −A·r.
    assert logp.grad.tolist() == pytest.approx([0.0, 0.0, -0.5, 1.5])
    # Clip-higher: eps_hi = 0.28 lets the first token reach 1.28.
    out_hi = _loss(torch.zeros(4, dtype=torch.float64), [ON] * 4, adv, logp_old=-ratio.log(), eps_hi=0.28)
    assert out_hi.loss.item() == pytest.approx(-(1.28 - 0.8 + 0.5 - 1.5))


def test_entropy_bonus_and_k3_kl():
    logp = torch.tensor([math.log(0.5), math.log(0.5)], dtype=torch.float64)
    weight = torch.tensor([0.5, 0.5], dtype=torch.float64)
    base = _loss(logp, [NLL, NLL], weight=weight).loss.item()
    assert base == pytest.approx(math.log(2))
    out = _loss(logp, [NLL, NLL], weight=weight, entropy_N=torch.tensor([1.0, 2.0], dtype=torch.float64),
                entropy_coef=0.01, kl_coef=0.1, ref_logp_N=logp + 0.1)
    k3 = math.exp(0.1) - 0.1 - 1  # 0.0051709
    assert out.entropy_loss.item() == pytest.approx(-0.01 * 1.5)
    assert out.kl_loss.item() == pytest.approx(0.1 * k3)
    assert out.loss.item() == pytest.approx(base - 0.015 + 0.1 * k3)
    with pytest.raises(ValueError, match="ref_logp_N"):
        _loss(logp, [NLL, NLL], kl_coef=0.1)


def test_padding_tokens_are_inert():
    logp = torch.tensor([math.log(0.5), float("-inf")], dtype=torch.float64, requires_grad=True)
    out = _loss(logp, [ON, ON], [1.0, float("nan")], logp_old=torch.tensor([math.log(0.5), 1e4], dtype=torch.float64),
                weight=torch.tensor([1.0, 0.0], dtype=torch.float64))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-1.0)
    assert torch.isfinite(logp.grad).all() and logp.grad[1].item() == 0.0


def test_bad_inputs_name_the_tensor():
    with pytest.raises(ValueError, match="adv_N"):
        _loss(torch.zeros(3, dtype=torch.float64), [ON] * 3, [1.0, 1.0])
    with pytest.raises(ValueError, match="kind_N"):
        _loss(torch.zeros(2, dtype=torch.float64), [0, 7])


# --- gradcheck of the full RED loss ---------------------------------------------------------
# The stop-gradient in r^offline = π / (sg(π) + (1 − sg(π))·r̄) makes the *value* of the loss at
# r̄ < 1 not a function whose derivative is the gradient (finite differences move sg(π) too).
# So gradcheck runs on (a) the whole loss with the sg-free kinds and r̄ = 1 (π_offline = 1), and
# (b) for r̄ in [0, 1) the gradient is compared with a gradchecked function in which π_offline is
# the constant it is at the evaluation point: that is what the stop-gradient means.
def _setup(seed=0, N=10, V=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, V, (N,), generator=g)
    adv = torch.randn(N, dtype=torch.float64, generator=g)
    weight = torch.rand(N, dtype=torch.float64, generator=g) + 0.1
    return g, logits, target, adv, weight


def _logp_ent(z, target):
    lp = torch.log_softmax(z, -1)
    return lp.gather(1, target[:, None]).squeeze(1), -(lp.exp() * lp).sum(-1)


def test_gradcheck_full_red_loss_float64():
    g, logits, target, adv, weight = _setup()
    N = logits.shape[0]
    kind = torch.tensor([ON, ON, ON, ON, SHIFT, SHIFT, LUFFY, LUFFY, NLL, ON], dtype=torch.int32)
    rbar = torch.tensor([0, 0, 0, 0, 1.0, 1.0, 0, 0, 0, 0], dtype=torch.float64)
    w = torch.tensor([1, 1, 1, 1, 2.5, 2.5, 2.5, 2.5, 1, 1], dtype=torch.float64)
    with torch.no_grad():
        logp0, _ = _logp_ent(logits, target)
    # Ratios 0.6..1.6 land on both sides of the clip, away from its kinks at 0.8 and 1.2.
    logp_old = logp0 - torch.log(torch.tensor([1.5, 0.6, 1.05, 0.95, 1, 1, 1, 1, 1, 1.6], dtype=torch.float64))
    ref = logp0 + 0.3 * torch.randn(N, dtype=torch.float64, generator=g)

    def f(z):
        logp, ent = _logp_ent(z, target)
        return red_token_loss(logp, logp_old, ent, kind, adv, rbar, w, weight,
                              entropy_coef=0.05, kl_coef=0.2, ref_logp_N=ref, eps_lo=0.2, eps_hi=0.2).loss

    out = red_token_loss(logp0, logp_old, None, kind, adv, rbar, w, weight)
    assert 0 < out.clip_frac.item() < 1  # both clip branches are exercised
    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("rbar_value", [0.0, 0.25, 0.5, 0.9])
def test_shift_gradient_equals_gradchecked_frozen_denominator(rbar_value):
    _, logits, target, adv, weight = _setup(seed=2, N=6)
    N = logits.shape[0]
    kind = torch.tensor([SHIFT] * 4 + [ON, NLL], dtype=torch.int32)
    rbar = torch.tensor([rbar_value] * 4 + [0, 0], dtype=torch.float64)
    w = torch.tensor([2.0] * 4 + [1, 1], dtype=torch.float64)
    with torch.no_grad():
        logp0, _ = _logp_ent(logits, target)
    logp_old = logp0 - 0.05
    pi0 = logp0.exp()
    log_pi_off = torch.log(pi0 + (1 - pi0) * rbar)  # the stop-gradient's value, now a constant
    is_shift = kind == SHIFT

    def frozen(z):
        logp, _ = _logp_ent(z, target)
        shift = torch.where(is_shift, (logp - log_pi_off).exp() * adv, torch.zeros_like(logp))
        rest = red_token_loss(logp, logp_old, None, torch.where(is_shift, ON, kind).to(torch.int32), adv, rbar, w,
                              torch.where(is_shift, 0.0, weight))
        return rest.loss - (weight * w * shift).sum()

    assert torch.autograd.gradcheck(frozen, (logits,), eps=1e-6, atol=1e-7)
    z = logits.detach().clone().requires_grad_()
    logp, _ = _logp_ent(z, target)
    (g_loss,) = torch.autograd.grad(red_token_loss(logp, logp_old, None, kind, adv, rbar, w, weight).loss, z)
    z2 = logits.detach().clone().requires_grad_()
    (g_frozen,) = torch.autograd.grad(frozen(z2), z2)
    torch.testing.assert_close(g_loss, g_frozen)
    assert frozen(logits.detach()).item() == pytest.approx(
        red_token_loss(logp0, logp_old, None, kind, adv, rbar, w, weight).loss.item())


# --- shuffling the batch ---------------------------------------------------------------------
def _batch(perm=None):
    g = torch.Generator().manual_seed(1)
    G, P = 3, 3
    gid, off = group_layout(P, G, with_offline=True)
    B = gid.numel()
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    lens = torch.randint(1, 5, (B,), generator=g)
    logp = [torch.log(torch.rand(int(n), dtype=torch.float64, generator=g) * 0.9 + 0.05) for n in lens]
    old = [x + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=g) for x in logp]
    ent = [torch.rand(int(n), dtype=torch.float64, generator=g) * 3 for n in lens]
    order = list(range(B)) if perm is None else perm.tolist()
    pick = lambda xs: torch.cat([xs[i] for i in order])  # noqa: E731
    return (rewards[order], gid[order], off[order], lens[order], pick(logp), pick(old), pick(ent))


def test_shuffling_samples_changes_neither_loss_nor_w():
    results = []
    for perm in (None, torch.randperm(12, generator=torch.Generator().manual_seed(7))):
        rewards, gid, off, lens, logp, old, ent = _batch(perm)
        obj = build_objective(AlgoConfig(preset="red", num_online=3))
        obj.offline_weight(EntropyStats(h_rl=1.5, h_sft=1.2))  # step t-1
        w = obj.offline_weight(batch_entropy_stats(sample_mean_entropy(ent, lens), off))
        terms, _, _ = obj.token_terms(rewards, gid, off, lens, w=w)
        results.append((obj.loss(logp, old, None, terms).loss.item(), w))
    (l0, w0), (l1, w1) = results
    assert w0 == pytest.approx(w1) and 1.0 < w0 < 3.0  # neither the first-step w nor a clip
    assert l0 == pytest.approx(l1, rel=1e-12, abs=1e-12)


def test_matches_kernels_reference_when_available():
    pytest.importorskip("triton", reason="triton is not installed (kernels/ needs it)")
    ref_mod = importlib.import_module("kernels.red_loss_reference")  # the project's own code: an import error fails
    g = torch.Generator().manual_seed(3)
    N, V = 8, 11
    logits = torch.randn(N, V, dtype=torch.float64, generator=g)
    target = torch.randint(0, V, (N,), generator=g)
    kind = torch.tensor([ON, ON, SHIFT, SHIFT, LUFFY, NLL, ON, SHIFT], dtype=torch.int32)
    adv = torch.randn(N, generator=g)
    rbar = torch.tensor([0, 0, 0.3, 1.0, 0, 0, 0, 0.0])
    w = torch.tensor([1, 1, 2.0, 2.0, 1, 1, 1, 2.0])
    weight = torch.rand(N, generator=g)
    lp = torch.log_softmax(logits, -1)
    logp = lp.gather(1, target[:, None]).squeeze(1)
    old = (logp + 0.3 * torch.randn(N, dtype=torch.float64, generator=g)).float()
    kw = dict(kind_N=kind, adv_N=adv, logp_old_N=old, rbar_N=rbar, w_N=w, weight_N=weight)
    z = logits.clone().requires_grad_()
    theirs = ref_mod.red_loss_reference(z, target, vocab_start=0, vocab_size=V, temperature=1.0, **kw)
    mine = red_token_loss(logp, old, None, kind, adv, rbar, w, weight)
    assert theirs.loss.item() == pytest.approx(mine.loss.item(), rel=1e-6, abs=1e-9)
    assert theirs.clip_frac.item() == pytest.approx(mine.clip_frac.item())


def test_objective_terms_feed_the_kernel_reference_unchanged():
    """TokenTerms.kernel_kwargs() + RedObjective.loss_kwargs() are exactly the kernel's keywords."""
    pytest.importorskip("triton", reason="triton is not installed (kernels/ needs it)")
    ref_mod = importlib.import_module("kernels.red_loss_reference")  # the project's own code: an import error fails
    rewards, gid, off, lens, logp, old, _ = _batch()
    obj = build_objective(AlgoConfig(preset="red", num_online=3, eps_hi=0.28, entropy_coef=0.01))
    terms, _, _ = obj.token_terms(rewards, gid, off, lens, w=1.7)
    N, V = logp.numel(), 7
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(N, V, dtype=torch.float64, generator=g)
    target = torch.randint(0, V, (N,), generator=g)
    lp = torch.log_softmax(logits, -1)
    logp = lp.gather(1, target[:, None]).squeeze(1)
    ent = -(lp.exp() * lp).sum(-1)
    old = (logp + 0.2 * torch.randn(N, dtype=torch.float64, generator=g)).float()
    theirs = ref_mod.red_loss_reference(logits, target, vocab_start=0, vocab_size=V, temperature=1.0,
                                        logp_old_N=old, **terms.kernel_kwargs(), **obj.loss_kwargs())
    mine = obj.loss(logp, old, ent, terms)
    assert theirs.loss.item() == pytest.approx(mine.loss.item(), rel=1e-6, abs=1e-9)
