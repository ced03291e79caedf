"""MegatronPolicy.train_step on the 2-process gloo pool: learning, loss semantics, PP parity, NaN skip."""
from __future__ import annotations

import math

import pytest
import torch

from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, nll_terms, params_snapshot, red_terms, tiny_policy

pytestmark = pytest.mark.dist


def _job_learns_and_sums(tp: int):
    """A few NLL steps on a fixed batch; the first step's loss equals -Σ weight·logp of the logprob pass."""
    with megatron_parallel(tp=tp, pp=1, seed=7):
        pol = tiny_policy(tp=tp)
        tokens, prompts = fixed_batch()
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        terms = nll_terms(n, scale=1.0 / pol.groups.dp_size)  # weight carries the DP normalisation
        logp0, ent0 = pol.logprobs_and_entropy(tokens, prompts, 1.0)
        out = [pol.train_step(tokens, prompts, terms, torch.zeros(n)) for _ in range(6)]
        # One big micro-batch and many small ones must give the same loss (SUM, not mean).
        pol.cfg.micro_batch_tokens = 512
        big = pol.logprobs_and_entropy(tokens, prompts, 1.0)
        pol.cfg.micro_batch_tokens = 40
        small = pol.logprobs_and_entropy(tokens, prompts, 1.0)
        return {"expected0": float(-(terms["weight_N"] * logp0).sum() * pol.groups.dp_size), "steps": out,
                "ent0": float(ent0.mean()), "mb_diff": float((big[0] - small[0]).abs().max())}


@pytest.mark.parametrize("tp", [1, 2])
def test_train_steps_lower_the_loss(dist2, tp):
    r0, r1 = dist2.run(_job_learns_and_sums, tp)
    losses = [s["loss"] for s in r0["steps"]]
    assert [s["loss"] for s in r1["steps"]] == losses  # every rank reports the same numbers
    assert math.isclose(losses[0], r0["expected0"], rel_tol=1e-5), (losses[0], r0["expected0"])
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(s["skipped"] == 0.0 for s in r0["steps"])
    assert r0["steps"][0]["lr"] == pytest.approx(1e-3)  # warmup 1: the first update already at peak
    assert r0["steps"][0]["micro_batches"] > 1  # the budget (64 tokens) forces several micro-batches
    assert r0["mb_diff"] < 1e-5
    assert 0 < r0["ent0"] <= math.log(1024) + 1e-4


def _job_micro_batch_sum(budget: int):
    with megatron_parallel(tp=2, pp=1, seed=3):
        pol = tiny_policy(tp=2, micro_batch_tokens=budget, clip_grad=0.0)
        tokens, prompts = fixed_batch()
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        out = pol.train_step(tokens, prompts, red_terms(n), torch.full((n,), -7.0))
        return out["loss"], out["grad_norm"], out["micro_batches"], out["clip_frac"]


def test_loss_and_grads_are_summed_over_micro_batches(dist2):
    one = dist2.run(_job_micro_batch_sum, 512)[0]
    many = dist2.run(_job_micro_batch_sum, 40)[0]
    assert one[2] == 1 and many[2] >= 3
    assert one[0] == pytest.approx(many[0], rel=1e-5, abs=1e-6)
    assert one[1] == pytest.approx(many[1], rel=1e-5)  # megatron did not divide by num_microbatches
    assert one[3] == pytest.approx(many[3])


def _job_pp_parity(pp: int, ckpt: str):
    """Same weights (a PP=1 checkpoint) trained at PP=1 (DP=2, half batch each) and at PP=2."""
    from red_megatron.policy.checkpoint import save_checkpoint

    with megatron_parallel(tp=1, pp=pp, seed=11):
        pol = tiny_policy(pp=pp)
        if pp == 1:
            save_checkpoint(ckpt, 0, chunks=pol.ddp, groups=pol.groups)
        else:
            pol.load_checkpoint(ckpt, load_optimizer=False, load_rng=False)
        tokens, prompts = fixed_batch()
        n_all = sum(len(t) - p for t, p in zip(tokens, prompts))
        terms_all = red_terms(n_all, seed=5)
        if pp == 1:  # data parallel: each rank takes its half of the sequences, weights stay global
            r = torch.distributed.get_rank()
            idx = [i for i in range(len(tokens)) if i % 2 == r]
            offs = [0]
            for t, p in zip(tokens, prompts):
                offs.append(offs[-1] + len(t) - p)
            sel = torch.cat([torch.arange(offs[i], offs[i + 1]) for i in idx])
            tokens, prompts = [tokens[i] for i in idx], [prompts[i] for i in idx]
            terms = {k: v[sel] for k, v in terms_all.items()}
            logp_old = torch.full((len(sel),), -6.5)
        else:
            terms, logp_old = terms_all, torch.full((n_all,), -6.5)
        steps = [pol.train_step(tokens, prompts, terms, logp_old) for _ in range(3)]
        lp, ent = pol.logprobs_and_entropy(*fixed_batch(seed=1), temperature=0.7)
        return {"steps": [(s["loss"], s["grad_norm"], s["clip_frac"]) for s in steps], "lp": lp, "ent": ent}


def test_pp2_train_step_matches_pp1(dist2, tmp_path):
    ref = dist2.run(_job_pp_parity, 1, str(tmp_path / "w"))[0]
    pp2 = dist2.run(_job_pp_parity, 2, str(tmp_path / "w"))
    for a, b in zip(ref["steps"], pp2[0]["steps"]):
        assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == pytest.approx(b[1], rel=1e-4)
        assert a[2] == pytest.approx(b[2], abs=1e-6)
    assert pp2[0]["steps"] == pp2[1]["steps"]  # both stages report the last stage's numbers
    assert torch.allclose(ref["lp"], pp2[1]["lp"], atol=1e-4) and torch.allclose(ref["ent"], pp2[1]["ent"], atol=1e-4)
    assert torch.equal(pp2[0]["lp"], pp2[1]["lp"])  # the first stage received the last stage's result


def _job_nan_skip(with_nan_step: bool):
    with megatron_parallel(tp=2, pp=1, seed=5):
        pol = tiny_policy(tp=2)
        tokens, prompts = fixed_batch()
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        good = red_terms(n, seed=2)
        out = [pol.train_step(tokens, prompts, good, torch.full((n,), -6.0))]
        snap = params_snapshot(pol)
        skipped = None
        if with_nan_step:
            bad = dict(good)
            bad["adv_N"] = good["adv_N"].clone()
            bad["adv_N"][3] = float("nan")
            skipped = pol.train_step(tokens, prompts, bad, torch.full((n,), -6.0))
            after = params_snapshot(pol)
            untouched = all(torch.equal(snap[k], after[k]) for k in snap)
            updates_after_skip = pol.num_updates
        else:
            untouched, updates_after_skip = None, None
        out.append(pol.train_step(tokens, prompts, good, torch.full((n,), -6.0)))
        return {"skipped": skipped, "untouched": untouched, "updates": updates_after_skip,
                "final": [(s["loss"], s["grad_norm"], s["lr"]) for s in out]}


def test_nan_step_is_skipped_without_touching_weights_or_optimizer(dist2):
    with_nan = dist2.run(_job_nan_skip, True)
    clean = dist2.run(_job_nan_skip, False)[0]
    r = with_nan[0]
    assert r["skipped"]["skipped"] == 1.0 and math.isnan(r["skipped"]["loss"])
    assert r["untouched"] and with_nan[1]["untouched"]
    assert r["updates"] == 1  # the schedule did not advance
    # Adam moments, step count and lr schedule untouched: the next update equals a run without the NaN batch.
    assert r["final"] == clean["final"]


def _job_old_pass(tp: int, pp: int, with_pass: bool):
    """Three updates on one batch of mixed token kinds, π_old from the no-grad pass or (None) from the
    update's own forward; each update re-reads π_old from the weights it starts from."""
    with megatron_parallel(tp=tp, pp=pp, seed=13):
        pol = tiny_policy(tp=tp, pp=pp)
        tokens, prompts = fixed_batch()
        n = sum(len(t) - p for t, p in zip(tokens, prompts))
        terms = red_terms(n, seed=4)
        steps, outs = [], []
        for _ in range(3):
            if with_pass:
                lp, ent = pol.logprobs_and_entropy(tokens, prompts)
                s = pol.train_step(tokens, prompts, terms, lp)
                outs.append((lp, ent))
            else:
                s = pol.train_step(tokens, prompts, terms, None)
                outs.append(s.pop("token_outputs"))
            steps.append((s["loss"], s["grad_norm"], s["clip_frac"]))
        return {"steps": steps, "outs": outs, "params": params_snapshot(pol)}


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_update_without_the_old_pass_is_bit_identical(dist2, tp, pp):
    """algo.old_logprobs='auto' drops the pass where it is redundant: losses, grad norms, parameters after
    three updates and the per-token log-probs/entropies (on both pipeline stages) are bit-identical."""
    a = dist2.run(_job_old_pass, tp, pp, True)
    b = dist2.run(_job_old_pass, tp, pp, False)
    for ra, rb in zip(a, b):
        assert ra["steps"] == rb["steps"]
        assert all(s[0] != 0.0 for s in ra["steps"]) and len({s[1] for s in ra["steps"]}) == 3
        for (lpa, enta), (lpb, entb) in zip(ra["outs"], rb["outs"]):
            assert torch.equal(lpa, lpb) and torch.equal(enta, entb)
        assert ra["params"].keys() == rb["params"].keys()
        assert all(torch.equal(ra["params"][k], rb["params"][k]) for k in ra["params"])
    assert not torch.equal(a[0]["outs"][0][0], a[0]["outs"][2][0])  # the updates did move the log-probs
