"""Megatron-Core on the CPU with gloo: the compat layer, TP=2 == TP=1, PP=2 == PP=1, dist-ckpt resharding.

Every multi-rank check runs on the shared 2-process pool (``dist2``). Weights are made once at
TP=1/PP=1 and saved with megatron's dist_checkpointing; the TP=2 and PP=2 runs load that same
checkpoint (so the checkpoint reshard is exercised by every parity test) and their logits, loss and
gradients are gathered back to full tensors and compared with the TP=1 run in the parent.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from tests.dist_pool import megatron_parallel

pytestmark = pytest.mark.dist

VOCAB, SEQ, BATCH, HIDDEN = 128, 16, 2, 64


def _build_gpt(pp_stage_layers: bool = True):
    """A tiny Llama-like GPTModel (RMSNorm, SwiGLU, GQA 4/2, RoPE, untied) on the stock local spec."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(
        num_layers=2, hidden_size=HIDDEN, num_attention_heads=4, num_query_groups=2,
        ffn_hidden_size=96, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, add_qkv_bias=True,
        hidden_dropout=0.0, attention_dropout=0.0, tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        pipeline_dtype=torch.float32, params_dtype=torch.float32, use_cpu_initialization=True,
        bias_dropout_fusion=False, apply_rope_fusion=False, masked_softmax_fusion=False,
        gradient_accumulation_fusion=False, persist_layer_norm=False,
    )
    return GPTModel(
        config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=VOCAB, max_sequence_length=SEQ, pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(), share_embeddings_and_output_weights=False,
        position_embedding_type="rope", parallel_output=True,
    )


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    pos = torch.arange(SEQ).unsqueeze(0).expand(BATCH, SEQ)
    return tokens, labels, pos


def _global_name(name: str, model) -> str:
    """Rename ``decoder.layers.<local>`` to the global layer index (PP stages number from 0)."""
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    if ".layers." not in name:
        return name
    pre, rest = name.split(".layers.", 1)
    idx, tail = rest.split(".", 1)
    return f"{pre}.layers.{int(idx) + get_transformer_layer_offset(model.config)}.{tail}"


def _full_tensor(name: str, t: torch.Tensor, param, group) -> torch.Tensor:
    """All-gather a TP shard to the full tensor (SwiGLU fc1 is [gate_i; up_i] on each rank)."""
    import torch.distributed as dist

    if not getattr(param, "tensor_model_parallel", False) or dist.get_world_size(group) == 1:
        return t.detach().clone()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.detach().contiguous(), group=group)
    dim = param.partition_dim
    if name.endswith("linear_fc1.weight"):
        gates = [p.chunk(2, dim=0)[0] for p in parts]
        ups = [p.chunk(2, dim=0)[1] for p in parts]
        return torch.cat(gates + ups, dim=0)
    return torch.cat(parts, dim=dim)


def _full_params_and_grads(model):
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()
    params, grads = {}, {}
    for name, p in model.named_parameters():
        gname = _global_name(name, model)
        params[gname] = _full_tensor(name, p.data, p, group)
        if p.grad is not None:
            grads[gname] = _full_tensor(name, p.grad, p, group)
    return params, grads


def _gather_logits(logits_local):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(logits_local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, logits_local.detach().contiguous(), group=group)
    return torch.cat(parts, dim=-1)


# ---------------------------------------------------------------- worker functions (both ranks)


def compat_check_worker():
    from red_megatron.policy import compat

    active = compat.enable()
    assert compat.enable() == active  # idempotent
    out = {"active": active, "cuda": torch.cuda.is_available()}
    if active:
        out["device_type"] = torch.empty(2, device="cuda").device.type
        out["int_device_type"] = torch.zeros(2, device=torch.cuda.current_device()).device.type
        out["dot_cuda"] = torch.ones(2).cuda().device.type
        out["type_name"] = torch.ones(1).type()
    with megatron_parallel(tp=1, pp=1, seed=7):
        from megatron.core.tensor_parallel import get_cuda_rng_tracker

        with get_cuda_rng_tracker().fork():
            a = torch.rand(4)
        with get_cuda_rng_tracker().fork():
            b = torch.rand(4)
        model = _build_gpt()
        tokens, labels, pos = _batch()
        loss = model(tokens, pos, attention_mask=None, labels=labels)
        loss.mean().backward()
        out.update(fork_a=a, fork_b=b, loss=loss.detach(),
                   grads_finite=all(torch.isfinite(p.grad).all().item() for p in model.parameters()))
    return out


@contextlib.contextmanager
def allow_child_processes():
    """dist_checkpointing.save starts writer processes; the pool's workers are daemonic, which
    multiprocessing forbids to have children. Lift the flag for the duration of a save."""
    import multiprocessing

    cfg = multiprocessing.current_process()._config
    old = cfg.get("daemon")
    cfg["daemon"] = False
    try:
        yield
    finally:
        cfg["daemon"] = old


def save_reference_worker(ckpt_dir: str):
    """TP=1/PP=1: build from a seed, save a dist checkpoint, return full logits/loss/grads."""
    from megatron.core import dist_checkpointing

    with megatron_parallel(tp=1, pp=1, seed=1234):
        model = _build_gpt()
        with allow_child_processes():
            dist_checkpointing.save(model.sharded_state_dict(), ckpt_dir)
        tokens, labels, pos = _batch()
        logits = model(tokens, pos, attention_mask=None)
        loss = model(tokens, pos, attention_mask=None, labels=labels).mean()
        loss.backward()
        params, grads = _full_params_and_grads(model)
    return {"logits": logits.detach(), "loss": loss.detach(), "params": params, "grads": grads}


def _load(model, ckpt_dir: str) -> None:
    from megatron.core import dist_checkpointing

    state = dist_checkpointing.load(model.sharded_state_dict(), ckpt_dir)
    model.load_state_dict(state)


def tp2_worker(ckpt_dir: str):
    with megatron_parallel(tp=2, pp=1, seed=1234):
        model = _build_gpt()
        _load(model, ckpt_dir)
        tokens, labels, pos = _batch()
        logits = _gather_logits(model(tokens, pos, attention_mask=None))
        loss = model(tokens, pos, attention_mask=None, labels=labels).mean()
        loss.backward()
        params, grads = _full_params_and_grads(model)
    return {"logits": logits, "loss": loss.detach(), "params": params, "grads": grads}


def pp_worker(ckpt_dir: str, pp: int, num_microbatches: int):
    """Forward+backward through megatron's pipeline schedule; returns loss and this stage's grads."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    with megatron_parallel(tp=1, pp=pp, seed=1234):
        model = _build_gpt()
        _load(model, ckpt_dir)
        tokens, labels, pos = _batch()
        mbs = BATCH // num_microbatches
        micro = [(tokens[i * mbs:(i + 1) * mbs], labels[i * mbs:(i + 1) * mbs], pos[i * mbs:(i + 1) * mbs])
                 for i in range(num_microbatches)]

        def loss_func(per_token_loss):
            loss = per_token_loss.mean()
            return loss, {"loss": loss.detach()}

        def forward_step(data_iterator, model_chunk):
            t, l, p = next(data_iterator)
            return model_chunk(t, p, attention_mask=None, labels=l), loss_func

        fb = get_forward_backward_func()
        if pp > 1:
            assert "without_interleaving" in fb.__name__, fb.__name__
        losses = fb(forward_step_func=forward_step, data_iterator=iter(micro), model=[model],
                    num_microbatches=num_microbatches, seq_length=SEQ, micro_batch_size=mbs,
                    forward_only=False)
        loss = torch.stack([d["loss"] for d in losses]).mean() if losses else None
        _, grads = _full_params_and_grads(model)
    return {"loss": loss, "grads": grads, "schedule": fb.__name__}


# ---------------------------------------------------------------- tests (parent)


def _assert_close(a, b, what, tol=1e-5):
    err = (a - b).abs().max().item()
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.0e}"


def test_compat_layer_activates_only_without_cuda(dist2):
    out = dist2.run(compat_check_worker)[0]
    assert out["active"] == (not out["cuda"])
    if out["active"]:
        assert out["device_type"] == out["int_device_type"] == out["dot_cuda"] == "cpu"
        assert out["type_name"] == "torch.cuda.FloatTensor"
    assert not torch.equal(out["fork_a"], out["fork_b"]), "the tracked RNG stream must advance"
    assert out["loss"].shape == (BATCH, SEQ) and torch.isfinite(out["loss"]).all()
    assert out["grads_finite"]


@pytest.fixture(scope="module")
def reference(dist2, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("gpt_tp1") / "ckpt"
    ckpt.mkdir()
    ref = dist2.run(save_reference_worker, str(ckpt))
    return str(ckpt), ref[0]


def test_tp2_equals_tp1_and_ckpt_reshard(dist2, reference):
    ckpt, ref = reference
    r0, r1 = dist2.run(tp2_worker, ckpt)
    for name, full in ref["params"].items():  # TP=1 checkpoint loaded at TP=2 gives the same weights
        assert torch.equal(r0["params"][name], full), f"param {name} differs after TP=1 -> TP=2 load"
    _assert_close(r0["logits"], ref["logits"], "logits TP=2 vs TP=1")
    _assert_close(r1["logits"], ref["logits"], "logits TP=2 rank1 vs TP=1")
    _assert_close(r0["loss"], ref["loss"], "loss")
    assert ref["grads"].keys() == r0["grads"].keys()
    for name, g in ref["grads"].items():
        _assert_close(r0["grads"][name], g, f"grad {name}")


def test_pp2_equals_pp1_through_pipeline_schedule(dist2, reference):
    ckpt, _ = reference
    ref = dist2.run(pp_worker, ckpt, 1, 2)[0]
    s0, s1 = dist2.run(pp_worker, ckpt, 2, 2)
    assert "without_interleaving" in s0["schedule"]
    assert s0["loss"] is None and s1["loss"] is not None  # the loss lives on the last stage
    _assert_close(s1["loss"], ref["loss"], "loss PP=2 vs PP=1")
    merged = {**s0["grads"], **s1["grads"]}
    assert merged.keys() == ref["grads"].keys()
    assert not (s0["grads"].keys() & s1["grads"].keys()), "stages must own disjoint parameters"
    for name, g in ref["grads"].items():
        _assert_close(merged[name], g, f"grad {name}")
