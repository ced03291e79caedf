"""Entropy statistics and Dynamic Entropy Regulation (RED part I; RED_SPEC steps 3-4, Eq. 9, 11).

RED reads RL as *Recall* (it sharpens what the model already does: entropy falls) and SFT on
the traces as *Extend* (it pulls in new patterns: entropy on them moves). The regulator
compares how fast each side's entropy is changing and gives the offline term a weight

    ΔH^rl = |1 − H^rl_t / H^rl_{t−1}|,   ΔH^sft = |1 − H^sft_t / H^sft_{t−1}|      (Eq. 11)
    w_t   = clip(ΔH^sft / ΔH^rl, 1, G)                                              (Eq. 9)

so when online exploration stalls (ΔH^rl → 0) the offline traces are weighted up to G.
Edge cases (RED_SPEC step 4): w = 1 at the first step; w = G when ΔH^rl ≤ 1e-8; a previous
entropy ≤ 1e-8 gives ΔH = 0 for that side.

H_i is the mean over sample i's response tokens of the full-vocabulary entropy; H^rl is the
mean of H_i over the online samples of the *global* batch, H^sft over the offline ones. For a
data-parallel caller, ``entropy_partial_sums`` gives the four numbers to all-reduce (sum)
before ``entropy_stats_from_sums``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from red_megatron.algo.groups import sample_index_of_tokens

DELTA_FLOOR = 1e-8  # RED_SPEC step 4: ΔH^rl ≤ this means "stalled"; H_{t-1} ≤ this gives ΔH = 0


def sample_mean_entropy(entropy_N: torch.Tensor, response_len_B: torch.Tensor) -> torch.Tensor:
    """H_B: mean token entropy of each sample; entropy_N is flattened sample by sample.

    A zero-length response has no entropy; it gets NaN and must not be counted (the
    trainer never produces one: a response holds at least EOS).
    """
    if entropy_N.dim() != 1 or int(response_len_B.sum()) != entropy_N.numel():
        raise ValueError(
            f"entropy_N has {entropy_N.numel()} tokens but response_len_B sums to {int(response_len_B.sum())}"
        )
    idx_N = sample_index_of_tokens(response_len_B)
    B = response_len_B.numel()
    total_B = torch.zeros(B, dtype=torch.float64, device=entropy_N.device).index_add(0, idx_N, entropy_N.detach().double())
    return total_B / response_len_B.double()


def entropy_partial_sums(H_B: torch.Tensor, is_offline_B: torch.Tensor) -> torch.Tensor:
    """[Σ H online, # online, Σ H offline, # offline] in float64, to be summed across DP ranks."""
    if H_B.shape != is_offline_B.shape or is_offline_B.dtype != torch.bool:
        raise ValueError("H_B and is_offline_B (torch.bool) must have the same shape")
    h = H_B.detach().double()
    on = ~is_offline_B
    return torch.stack([h[on].sum(), on.sum().double(), h[is_offline_B].sum(), is_offline_B.sum().double()])


@dataclass(frozen=True)
class EntropyStats:
    """H^rl and H^sft of one step; NaN where the batch has no sample of that kind."""

    h_rl: float
    h_sft: float


def entropy_stats_from_sums(sums_4: torch.Tensor) -> EntropyStats:
    s = [float(x) for x in sums_4.double().flatten().tolist()]
    if len(s) != 4:
        raise ValueError(f"expected the 4 sums of entropy_partial_sums, got {len(s)} values")
    h_rl = s[0] / s[1] if s[1] > 0 else math.nan
    h_sft = s[2] / s[3] if s[3] > 0 else math.nan
    return EntropyStats(h_rl=h_rl, h_sft=h_sft)


def batch_entropy_stats(H_B: torch.Tensor, is_offline_B: torch.Tensor) -> EntropyStats:
    """H^rl, H^sft of a local (non-distributed) batch."""
    return entropy_stats_from_sums(entropy_partial_sums(H_B, is_offline_B))


def relative_change(h_now: float, h_prev: float) -> float:
    """ΔH = |1 − H_t / H_{t−1}| (Eq. 11), 0 when H_{t−1} ≤ 1e-8."""
    if h_prev <= DELTA_FLOOR:
        return 0.0
    return abs(1.0 - h_now / h_prev)


def entropy_weight(
    h_rl: float, h_sft: float, prev_h_rl: float | None, prev_h_sft: float | None, max_weight: float
) -> tuple[float, float, float]:
    """(w, ΔH^rl, ΔH^sft) of Eq. 9; prev_* None means this is the first step (w = 1)."""
    if prev_h_rl is None or prev_h_sft is None:
        return 1.0, 0.0, 0.0
    d_rl = relative_change(h_rl, prev_h_rl)
    d_sft = relative_change(h_sft, prev_h_sft)
    if d_rl <= DELTA_FLOOR:
        return float(max_weight), d_rl, d_sft
    return min(max(d_sft / d_rl, 1.0), float(max_weight)), d_rl, d_sft


class EntropyRegulator:
    """RED part I as a small stateful object: remembers H^rl_{t−1}, H^sft_{t−1}.

    ``update`` is called once per optimiser step with the global batch's H^rl, H^sft (from the
    old-policy forward pass) and returns w_t. Its state goes into the checkpoint so a resumed
    run computes the same w.
    """

    def __init__(self, max_weight: float):
        if not max_weight >= 1.0:
            raise ValueError(f"max_weight (G) must be >= 1, got {max_weight}")
        self.max_weight = float(max_weight)
        self.prev_h_rl: float | None = None
        self.prev_h_sft: float | None = None
        self.num_updates = 0
        self.last_w = 1.0
        self.last_delta_rl = 0.0
        self.last_delta_sft = 0.0

    def update(self, h_rl: float, h_sft: float) -> float:
        h_rl, h_sft = float(h_rl), float(h_sft)
        for name, v in (("h_rl", h_rl), ("h_sft", h_sft)):
            if not math.isfinite(v) or v < 0:
                raise ValueError(
                    f"EntropyRegulator.update: {name}={v}; expected a finite mean entropy >= 0 "
                    "(is there at least one online and one offline sample in the global batch?)"
                )
        w, d_rl, d_sft = entropy_weight(h_rl, h_sft, self.prev_h_rl, self.prev_h_sft, self.max_weight)
        self.prev_h_rl, self.prev_h_sft = h_rl, h_sft
        self.num_updates += 1
        self.last_w, self.last_delta_rl, self.last_delta_sft = w, d_rl, d_sft
        return w

    def metrics(self) -> dict[str, float]:
        return {
            "entropy/delta_rl": self.last_delta_rl,
            "entropy/delta_sft": self.last_delta_sft,
            "red/w": self.last_w,
        }

    def state_dict(self) -> dict[str, float | int | None]:
        return {
            "max_weight": self.max_weight,
            "prev_h_rl": self.prev_h_rl,
            "prev_h_sft": self.prev_h_sft,
            "num_updates": self.num_updates,
            "last_w": self.last_w,
            "last_delta_rl": self.last_delta_rl,
            "last_delta_sft": self.last_delta_sft,
        }

    def load_state_dict(self, state: dict) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"EntropyRegulator state keys {sorted(state)}; expected {sorted(expected)}")
        if float(state["max_weight"]) != self.max_weight:
            raise ValueError(
                f"EntropyRegulator checkpoint has max_weight={state['max_weight']} but this run has {self.max_weight} (G changed?)"
            )
        self.prev_h_rl = None if state["prev_h_rl"] is None else float(state["prev_h_rl"])
        self.prev_h_sft = None if state["prev_h_sft"] is None else float(state["prev_h_sft"])
        self.num_updates = int(state["num_updates"])
        self.last_w = float(state["last_w"])
        self.last_delta_rl = float(state["last_delta_rl"])
        self.last_delta_sft = float(state["last_delta_sft"])
