"""Distributed checkpoints of MegatronPolicy: bit-exact resume, TP=2 -> TP=1, atomic saves."""
from __future__ import annotations

import json
import os

import pytest
import torch

from red_megatron.algo import LossParams
from tests.dist_pool import megatron_parallel
from tests.policy_helpers import fixed_batch, hf_policy, red_terms, tiny_policy

pytestmark = pytest.mark.dist


def _step(pol, seed=0):
    tokens, prompts = fixed_batch()
    n = sum(len(t) - p for t, p in zip(tokens, prompts))
    terms = red_terms(n, seed=seed)
    terms["weight_N"] = terms["weight_N"] / pol.groups.dp_size  # every DP rank has this batch: global mean
    pol.loss = LossParams(temperature=0.9)  # the loss's scalars belong to the policy
    out = pol.train_step(tokens, prompts, terms, torch.full((n,), -6.0))
    return out["loss"], out["grad_norm"], out["lr"], out["clip_frac"]


def _job_resume(tp: int, pp: int, root: str, sharding: str, hf_dir: str, dtype: str):
    state = {"data_pos": 2, "regulator": {"h_rl": 1.25, "h_sft": None}, "history": [0.5, 0.25]}
    with megatron_parallel(tp=tp, pp=pp, seed=21):
        pol = hf_policy(hf_dir, tp=tp, pp=pp, load_weights=False, checkpoint_sharding=sharding, dtype=dtype)
        first = [_step(pol, s) for s in range(2)]
        path = pol.save_checkpoint(root, 2, state)
        rng_after_save = torch.rand(3)
        cont = [_step(pol, s) for s in range(2, 5)]
    with megatron_parallel(tp=tp, pp=pp, seed=99):  # a different init: everything must come from the checkpoint
        pol = hf_policy(hf_dir, tp=tp, pp=pp, load_weights=False, checkpoint_sharding=sharding, dtype=dtype)
        loaded_state = pol.load_latest_checkpoint(root)
        rng_after_load = torch.rand(3)
        updates = pol.num_updates
        resumed = [_step(pol, s) for s in range(2, 5)]
    with megatron_parallel(tp=tp, pp=pp, seed=99):  # weights only: Adam moments start from zero
        pol = hf_policy(hf_dir, tp=tp, pp=pp, load_weights=False, checkpoint_sharding=sharding, dtype=dtype)
        pol.load_checkpoint(root, load_optimizer=False)
        weights_only = [_step(pol, s) for s in range(2, 5)]
    return {"first": first, "cont": cont, "resumed": resumed, "weights_only": weights_only, "state": loaded_state,
            "expected_state": state, "rng": (rng_after_save, rng_after_load), "updates": updates, "path": str(path)}


@pytest.mark.parametrize("tp,pp,sharding,dtype", [(2, 1, "dp_reshardable", "float32"), (1, 2, "dp_reshardable", "float32"),
                                                  (1, 1, "dp_reshardable", "float32"),
                                                  (2, 1, "fully_reshardable", "float32"),
                                                  (2, 1, "dp_reshardable", "bfloat16")])
def test_resume_reproduces_the_uninterrupted_run_bit_exactly(dist2, tmp_path, tiny_ckpt_dir, tp, pp, sharding, dtype):
    r0, r1 = dist2.run(_job_resume, tp, pp, str(tmp_path / "ckpt"), sharding, str(tiny_ckpt_dir), dtype)
    for r in (r0, r1):
        assert r["resumed"] == r["cont"], (r["resumed"], r["cont"])  # loss, grad norm, lr, clip frac: bit-exact
        assert r["weights_only"] != r["cont"]  # so the optimizer state really was restored
        assert r["state"] == r["expected_state"]
        assert torch.equal(*r["rng"])
        assert r["updates"] == 2
    assert r0["cont"][-1][0] != r0["first"][0][0]
    assert os.path.basename(r0["path"]) == "step_00000002"


def _job_logits(tp: int, root: str, train_first: bool, hf_dir: str):
    """Full-vocabulary logits of a fixed batch (gathered over TP) after loading/saving ``root``."""
    import torch.distributed as dist

    with megatron_parallel(tp=tp, pp=1, seed=31 + tp):
        pol = hf_policy(hf_dir, tp=tp, load_weights=False)
        if train_first:
            _step(pol)
            _step(pol, 1)
            pol.save_checkpoint(root, 2, {"k": 1})
        else:
            info = pol.load_checkpoint(root, load_optimizer=False)
            assert not info.loaded_rng  # another layout: RNG streams are not restored
            assert info.saved_layout["tp"] == 2
        tokens, _ = fixed_batch(seed=4, lengths=(24, 24), prompts=(1, 1))
        ids = torch.stack(tokens)
        pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
        with torch.no_grad():
            out = pol.chunks[0](input_ids=ids, position_ids=pos, attention_mask=None)
        if tp > 1:
            parts = [torch.empty_like(out) for _ in range(tp)]
            dist.all_gather(parts, out.contiguous(), group=pol.groups.tp_group)
            out = torch.cat(parts, dim=-1)
        err = None
        if not train_first:  # optimizer state saved dp_reshardable at TP=2 cannot load at TP=1
            try:
                pol.load_checkpoint(root)
            except ValueError as e:
                err = str(e)
        return out[..., :1024], err


def test_checkpoint_saved_at_tp2_loads_at_tp1_with_equal_logits(dist2, tmp_path, tiny_ckpt_dir):
    tp2 = dist2.run(_job_logits, 2, str(tmp_path / "c"), True, str(tiny_ckpt_dir))
    tp1 = dist2.run(_job_logits, 1, str(tmp_path / "c"), False, str(tiny_ckpt_dir))
    assert torch.equal(tp2[0][0], tp2[1][0])
    diff = (tp2[0][0] - tp1[0][0]).abs().max().item()
    assert diff < 1e-5, diff
    assert tp1[0][0].abs().max() > 0.01  # real logits, not zeros
    assert "dp_reshardable" in tp1[0][1] and "load_optimizer=False" in tp1[0][1]


def _job_cross_tp_resume(tp: int, hf_dir: str, root: str, save: bool):
    with megatron_parallel(tp=tp, pp=1, seed=3 + tp):
        pol = hf_policy(hf_dir, tp=tp, load_weights=False, checkpoint_sharding="fully_reshardable")
        if save:
            _step(pol)
            _step(pol, 1)
            pol.save_checkpoint(root, 2, {})
        else:
            pol.load_checkpoint(root)
        return [_step(pol, s) for s in range(2, 5)]


def test_fully_reshardable_optimizer_resumes_at_another_tp(dist2, tmp_path, tiny_ckpt_dir):
    """Saved at TP=2, resumed (weights + Adam state + schedule) at TP=1 x DP=2: same trajectory."""
    tp2 = dist2.run(_job_cross_tp_resume, 2, str(tiny_ckpt_dir), str(tmp_path / "x"), True)[0]
    tp1 = dist2.run(_job_cross_tp_resume, 1, str(tiny_ckpt_dir), str(tmp_path / "x"), False)[0]
    for a, b in zip(tp2, tp1):
        assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == pytest.approx(b[1], rel=1e-5)
        assert a[2] == b[2] and a[3] == b[3]


def _job_atomic(root: str):
    from megatron.core import dist_checkpointing

    from red_megatron.policy import checkpoint as ck

    with megatron_parallel(tp=2, pp=1, seed=41):
        pol = tiny_policy(tp=2, keep_last_checkpoints=2)
        _step(pol)
        pol.save_checkpoint(root, 1, {"at": 1})
        good = _step(pol, 1)
        real_save = dist_checkpointing.save

        def dying_save(sd, path, **kw):  # the job is "killed" after part of the files are written
            real_save(sd, path, **kw)
            raise KeyboardInterrupt("killed mid-save")

        dist_checkpointing.save = dying_save
        try:
            pol.save_checkpoint(root, 2, {"at": 2})
            died = False
        except KeyboardInterrupt:
            died = True
        finally:
            dist_checkpointing.save = real_save
        torch.distributed.barrier()
        listing_after_kill = sorted(os.listdir(root))
        latest_after_kill = ck.resolve_checkpoint(root).name
        pol2_state = pol.load_latest_checkpoint(root)  # back to step 1
        again = _step(pol, 1)  # the same update as right after the step-1 save
        for s in (3, 4, 5):
            pol.save_checkpoint(root, s, {"at": s})
        listing_end = sorted(os.listdir(root))
        meta = json.loads((ck.resolve_checkpoint(root) / "meta.json").read_text())
        return {"died": died, "after_kill": listing_after_kill, "latest_after_kill": latest_after_kill,
                "state": pol2_state, "good": good, "again": again, "end": listing_end, "meta_step": meta["step"]}


def test_a_save_killed_midway_leaves_the_last_good_checkpoint(dist2, tmp_path):
    r = dist2.run(_job_atomic, str(tmp_path / "ck"))[0]
    assert r["died"]
    assert ".tmp.step_00000002" in r["after_kill"] and "step_00000002" not in r["after_kill"]
    assert r["latest_after_kill"] == "step_00000001" and r["state"] == {"at": 1}
    assert r["again"] == r["good"]
    assert r["end"] == ["latest", "step_00000004", "step_00000005"]  # tmp swept, keep_last=2
    assert r["meta_step"] == 5


def _job_cp_resume(root: str, hf_dir: str):
    """Train at CP=2 (both ranks one replica), save, resume at CP=1 (DP=2) with the optimizer."""
    with megatron_parallel(cp=2, seed=21):
        pol = hf_policy(hf_dir, load_weights=False, cp=2, checkpoint_sharding="fully_reshardable")
        first = [_step(pol, s) for s in range(2)]
        pol.save_checkpoint(root, 2, {"k": 1})
        cont = [_step(pol, s) for s in range(2, 4)]
    with megatron_parallel(seed=99):
        pol = hf_policy(hf_dir, load_weights=False, checkpoint_sharding="fully_reshardable")
        state = pol.load_latest_checkpoint(root)
        resumed = [_step(pol, s) for s in range(2, 4)]
    return {"first": first, "cont": cont, "resumed": resumed, "state": state}


def test_checkpoint_saved_at_cp2_resumes_at_cp1(dist2, tmp_path, tiny_ckpt_dir):
    for r in dist2.run(_job_cp_resume, str(tmp_path / "ckpt"), str(tiny_ckpt_dir)):
        assert r["state"] == {"k": 1}
        for (l1, g1, lr1, _), (l2, g2, lr2, _) in zip(r["resumed"], r["cont"]):
            assert lr1 == lr2
            assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-6) and g1 == pytest.approx(g2, rel=1e-5)
        assert r["cont"][0][0] != r["first"][0][0]
