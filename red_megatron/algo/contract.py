"""The algo -> kernel contract as types: token kinds, loss hyper-parameters, the per-token bundle.

docs/KERNEL_CONTRACT.md is the prose; this module is the one definition. It imports only torch,
so the kernels (kernels/red_loss.py and its reference) import it too: the kind codes, the
defaults of the scalars and the row fills exist once.

    TokenKind    the per-token terms: Eq. 10's four and Rollout DPO's (int codes the Triton kernel compares with)
    LossParams   frozen, validated scalars: temperature, ε_lo, ε_hi, γ, entropy and KL coefficients;
                 built once by objective.build_objective, handed to the policy at construction
    TokenTerms   frozen per-token bundle over N response tokens: its fields are the contract's
                 tensors; ``select`` (a micro-batch's tokens) and ``rows`` (the logits-row layout,
                 weight 0 on rows that predict no response token) are its methods
"""
from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch


class TokenKind(enum.IntEnum):
    ONLINE = 0  # min(r·Â, clip(r, 1−ε_lo, 1+ε_hi)·Â),  r = exp(logp − logp_old)
    OFFLINE_SHIFT = 1  # r^offline·Â,  r^offline = π / (sg(π) + (1 − sg(π))·r̄)   (unclipped)
    OFFLINE_LUFFY = 2  # f(π)·Â,  f(π) = π / (π + γ)                             (unclipped)
    NLL = 3  # log π (the sft preset)
    DPO = 4  # Â·log π, Â = −∂L_DPO/∂(Σ_t log π) of the token's sequence (algo/dpo.py; unclipped)


KINDS: tuple[int, ...] = tuple(int(k) for k in TokenKind)


# The loss scalars' ranges, stated once: AlgoConfig (the run's config), LossParams (the policy's), the kernels'
# entry checks and the off-policy / DPO helpers all validate through check_loss_scalar.
LOSS_SCALAR_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (lambda v: v > 0, "> 0"),
    "eps_lo": (lambda v: 0 < v < 1, "in (0, 1)"),  # 1 − eps_lo is the ratio's lower clip
    "eps_hi": (lambda v: 0 < v <= 10, "in (0, 10]"),  # 1 + eps_hi its upper clip (DAPO's clip-higher: 0.28)
    "luffy_gamma": (lambda v: v > 0, "> 0"),
    "entropy_coef": (lambda v: v >= 0, ">= 0"),
    "kl_coef": (lambda v: v >= 0, ">= 0"),
    "tis_cap": (lambda v: v >= 1, ">= 1"),  # below 1 even an on-policy token (ratio 1) would be down-weighted
    "tis_mask_bound": (lambda v: v > 1, "> 1"),  # samples whose ratio leaves [1/bound, bound] are masked
    "dpo_beta": (lambda v: v > 0, "> 0"),
}


def check_loss_scalar(name: str, value, *, where: str, optional: bool = False) -> None:
    """One ValueError ``<where>.<name> must be <range>, got <value>`` unless ``value`` is a finite number in
    the scalar's range (or None where ``optional``). ``where``: the section as the user writes it (``algo``
    for the run config), else the class or function."""
    ok, expected = LOSS_SCALAR_RULES[name]
    if optional and value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{where}.{name} must be a number {expected}, got {value!r}")
    if not math.isfinite(value):  # config_values' wording: the same refusal as any other non-finite field
        raise ValueError(f"non-finite value in {where}.{name}={value!r}: expected a finite number {expected}")
    if not ok(value):
        raise ValueError(f"{where}.{name} must be {'None or ' if optional else ''}{expected}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class LossParams:
    """The loss's scalars (not per token). Defaults here are the only ones in the code base."""

    temperature: float = 1.0  # of logp and entropy in the loss (= the sampling temperature)
    eps_lo: float = 0.2  # clip(r, 1 − eps_lo, 1 + eps_hi); eps_hi > eps_lo is clip-higher
    eps_hi: float = 0.2
    luffy_gamma: float = 0.1  # f(π) = π / (π + γ)
    entropy_coef: float = 0.0  # − entropy_coef · Σ weight·H
    kl_coef: float = 0.0  # + kl_coef · Σ weight·k3(ref_logp, logp)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_loss_scalar(f.name, getattr(self, f.name), where="LossParams")

    def loss_kwargs(self) -> dict[str, float]:
        """The keyword scalars of red_token_loss / kernels.red_loss besides the temperature."""
        return {"eps_lo": self.eps_lo, "eps_hi": self.eps_hi, "luffy_gamma": self.luffy_gamma,
                "entropy_coef": self.entropy_coef, "kl_coef": self.kl_coef}


DEFAULT_PARAMS = LossParams()

# The contract's per-token tensors, in the order the kernel takes them.
LOSS_FIELDS = ("kind_N", "adv_N", "logp_old_N", "rbar_N", "w_N", "weight_N", "ref_logp_N")
# Fills for logit rows that predict no response token (prompt rows, padding): weight 0 masks a row
# in the kernel and in the reference; the other values only keep the row's arithmetic finite.
ROW_FILL = {"kind_N": int(TokenKind.NLL), "adv_N": 0.0, "logp_old_N": 0.0, "rbar_N": 1.0, "w_N": 0.0,
            "weight_N": 0.0, "ref_logp_N": 0.0, "sample_idx_N": -1, "is_offline_N": False, "is_weight_N": 0.0}


@dataclass(frozen=True)
class TokenTerms:
    """The contract's per-token tensors, 1-D over N response tokens in N order.

    kind_N int (TokenKind), adv_N Â, rbar_N r̄ (OFFLINE_SHIFT), w_N RED's offline weight (1 online),
    weight_N the aggregation weight with every normaliser folded in (0 = padding). logp_old_N and
    ref_logp_N arrive after the old-policy pass (``with_logp``). sample_idx_N / is_offline_N are
    bookkeeping for metrics (None when the bundle was not built by build_token_terms).
    is_weight_N is the off-policy correction's truncated importance weight ρ (algo/off_policy.py;
    None: no correction); ``with_is_weight`` sets it and folds it into weight_N, which is how the
    kernel and the reference consume it (ρ multiplies the token's whole term, like an aggregation
    weight): no kernel argument changes, and a bundle without it is the bundle of before.
    """

    kind_N: torch.Tensor
    adv_N: torch.Tensor
    rbar_N: torch.Tensor
    w_N: torch.Tensor
    weight_N: torch.Tensor
    sample_idx_N: torch.Tensor | None = None  # int64, index of the token's sample in the batch
    is_offline_N: torch.Tensor | None = None  # bool
    logp_old_N: torch.Tensor | None = None
    ref_logp_N: torch.Tensor | None = None
    is_weight_N: torch.Tensor | None = None  # fp32 TIS weight ρ (1 offline, 0 on masked samples)

    def __post_init__(self) -> None:
        n = self.kind_N.shape[0] if isinstance(self.kind_N, torch.Tensor) and self.kind_N.dim() == 1 else None
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is None and f.default is None:
                continue
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or (n is not None and t.shape[0] != n):
                raise ValueError(f"{f.name}: expected a 1-D tensor with one value per response token "
                                 f"(N={n} like kind_N), got {getattr(t, 'shape', type(t))}")
        if self.kind_N.dtype.is_floating_point or self.kind_N.dtype == torch.bool:
            raise ValueError(f"kind_N: expected an integer tensor with values in {KINDS}, got {self.kind_N.dtype}")

    @classmethod
    def of(cls, terms: "TokenTerms | Mapping[str, torch.Tensor]") -> "TokenTerms":
        """A TokenTerms as is, or one from a mapping of its field names (kind_N, adv_N, ...)."""
        return terms if isinstance(terms, TokenTerms) else cls(**terms)

    @property
    def num_tokens(self) -> int:
        return int(self.kind_N.shape[0])

    def with_logp(self, logp_old_N: torch.Tensor, ref_logp_N: torch.Tensor | None = None) -> "TokenTerms":
        """The bundle with the old policy's (and the reference policy's) log-probs filled in."""
        return dataclasses.replace(self, logp_old_N=logp_old_N, ref_logp_N=ref_logp_N)

    def with_is_weight(self, is_weight_N: torch.Tensor) -> "TokenTerms":
        """The bundle corrected by the truncated importance weights ρ (decoupled PPO with TIS):
        weight_N·ρ, with ρ kept in is_weight_N (once: a second correction is refused)."""
        if self.is_weight_N is not None:
            raise ValueError("TokenTerms.with_is_weight: the importance weights are already applied")
        if not isinstance(is_weight_N, torch.Tensor) or is_weight_N.shape != self.weight_N.shape:
            raise ValueError(f"is_weight_N: expected a tensor of shape {tuple(self.weight_N.shape)} like weight_N, "
                             f"got {getattr(is_weight_N, 'shape', type(is_weight_N))}")
        rho = is_weight_N.to(self.weight_N.dtype)
        return dataclasses.replace(self, weight_N=self.weight_N * rho, is_weight_N=rho)

    def _map(self, fn) -> "TokenTerms":
        return TokenTerms(**{f.name: None if (t := getattr(self, f.name)) is None else fn(f.name, t)
                             for f in dataclasses.fields(self)})

    def to(self, device) -> "TokenTerms":
        return self._map(lambda _, t: t.to(device))

    def select(self, index_M: torch.Tensor, device=None) -> "TokenTerms":
        """The tokens at index_M (a micro-batch), on ``device``; weights are NOT renormalised."""
        return self._map(lambda _, t: t.index_select(0, index_M.to(t.device)).to(device or t.device))

    def rows(self, rows_M: torch.Tensor, num_rows: int) -> "TokenTerms":
        """Row layout: value M goes to logits row rows_M[M] of num_rows; other rows get ROW_FILL."""
        def scatter(name, t):
            full = torch.full((num_rows,), ROW_FILL[name], dtype=t.dtype, device=t.device)
            full[rows_M.to(t.device)] = t
            return full
        return self._map(scatter)

    def kernel_kwargs(self) -> dict[str, torch.Tensor]:
        """The per-token keywords of kernels.red_loss (logp_old_N / ref_logp_N only once set)."""
        return {k: t for k in LOSS_FIELDS if (t := getattr(self, k)) is not None}
