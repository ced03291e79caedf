"""The Table-1 probes of STUDY_DESIGN §6.6 item 7: a checkpoint's entropy on the teacher's traces and on its own
samples, computed after the run from its exported HF directory.

- probe H^sft: teacher-forced full-vocabulary entropy over the response tokens of ``n_rows`` fixed val traces.
  Prompt and trace tokens come from the project's own ``RedDataset`` (chat template, EOS, the response limit),
  so they are exactly what training sees as an offline sample.
- probe H^rl: the same entropy over the checkpoint's own samples for the same val prompts, drawn at T=1 with
  ``transformers``' ``generate`` on the CPU in fp32 (pure ancestral sampling: no top-k, no top-p), at most
  ``max_response_tokens`` tokens, stopping at the tokenizer's EOS or any ``eos_token_id`` of the checkpoint's
  ``generation_config.json`` (what vLLM stops at in the training rollouts); the stop token is part of the
  response, as in training. Deterministic: ``seed`` seeds a forked torch RNG, prompts of one length are drawn
  in fixed batches, and the probe runs on one thread (restored after), so the same checkpoint, rows and seed
  give the same samples however loaded the machine is. The study passes each cell's seed (as its eval does).
Both are "sample means" like ``red_megatron.algo.entropy``: per sample the mean over its response tokens
(EOS included), then the mean over samples. Entropy is computed from fp32 logits at temperature 1.

Rows: val is ordered by k (32 a k), so ``selection="spread"`` (the default) takes ``n_rows`` evenly spaced rows
(7-8 of each k for 64 of 288); ``"first"`` takes the first ``n_rows`` (k 1-2 only on the chain val split).

``cached_probe`` writes ``probe.json`` (atomically) holding the key it was computed for (the checkpoint's path,
a hash of its weights, the settings) and reuses it only when the key matches. ``probe_targets`` says where each
study cell's checkpoints and probe files are: beside ``hf/`` in the run (or stage) directory, and in the cell
directory for the base (whose checkpoint lives outside the study).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from red_megatron.study.runner import cell_dir, preset_of, stage_dirs

PROBE_VERSION = 1
SELECTIONS = ("spread", "first")
PROBE_FILE = "probe.json"
NO_PROBE = ("frozen_w",)  # a control that is never evaluated: only its w matters
SUMMARY_KEYS = ("h_sft", "h_rl", "n", "sft_len", "rl_len", "rl_truncated", "seconds")


@dataclass(kw_only=True)
class ProbeConfig:
    """Which val rows, the length limits and formatting of training, and the sampling seed."""
    val_path: str
    n_rows: int = 64
    selection: str = "spread"
    max_prompt_tokens: int = 32
    max_response_tokens: int = 224
    seed: int = 0
    chat_template: str | None = None  # DataConfig.chat_template of the study's training data
    eos_token: str | None = None  # DataConfig.eos_token of the study's training data
    batch_size: int = 64  # prompts a generate call

    def __post_init__(self):
        if not isinstance(self.val_path, (str, os.PathLike)) or not str(self.val_path):
            raise ValueError(f"ProbeConfig.val_path must be a path, got {self.val_path!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"ProbeConfig.selection must be one of {SELECTIONS}, got {self.selection!r}")
        for name in ("n_rows", "max_prompt_tokens", "max_response_tokens", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ProbeConfig.{name} must be an int >= 1, got {v!r}")
        if self.max_response_tokens < 2:
            raise ValueError(f"ProbeConfig.max_response_tokens must be >= 2, got {self.max_response_tokens}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"ProbeConfig.seed must be an int >= 0, got {self.seed!r}")

    def settings(self) -> dict:
        return {**dataclasses.asdict(self), "val_path": str(Path(self.val_path).resolve()), "temperature": 1.0,
                "version": PROBE_VERSION}


def probe_rows(n_total: int, n: int, selection: str = "spread") -> list[int]:
    """The dataset positions probed: ``n`` evenly spaced (``spread``) or the first ``n``; all when n >= n_total."""
    if n >= n_total:
        return list(range(n_total))
    if selection == "first":
        return list(range(n))
    return [i * n_total // n for i in range(n)]


def load_probe_data(tokenizer, cfg: ProbeConfig) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """(source rows, prompt ids, trace ids with EOS, cut to the response limit) of the probed val rows."""
    from red_megatron.data.dataset import DataConfig, RedDataset

    ds = RedDataset.load(DataConfig(path=str(cfg.val_path), schema="openr1", require_trace=True,
                                    max_prompt_tokens=cfg.max_prompt_tokens,
                                    max_response_tokens=cfg.max_response_tokens, chat_template=cfg.chat_template,
                                    eos_token=cfg.eos_token, answer_check="off", shuffle=False,
                                    global_batch_size=1), tokenizer)
    idx = probe_rows(len(ds), cfg.n_rows, cfg.selection)
    examples = [ds[i] for i in idx]
    return [ex.row for ex in examples], [ex.prompt_ids for ex in examples], [ex.trace_ids for ex in examples]


def response_entropies(model, prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
    """Per sample: the mean full-vocabulary entropy (fp32 logits, T=1) over its response tokens, teacher-forced."""
    import torch

    from red_megatron.algo.entropy import sample_mean_entropy

    ent, lens = [], []
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            if not r:
                raise ValueError("response_entropies: an empty response has no entropy")
            ids = torch.tensor([p + r], dtype=torch.long)
            logits_RV = model(input_ids=ids).logits[0, len(p) - 1:len(p) + len(r) - 1].float()
            logp_RV = torch.log_softmax(logits_RV, dim=-1)
            ent.append(-(logp_RV.exp() * logp_RV).sum(-1))
            lens.append(len(r))
    H_B = sample_mean_entropy(torch.cat(ent), torch.tensor(lens))
    return [float(h) for h in H_B]


def stop_token_ids(model, tokenizer, eos_token: str | None = None) -> list[int]:
    """The tokenizer's EOS (or ``eos_token``) and every eos_token_id of the checkpoint's generation config."""
    from red_megatron.data.chat import eos_token_id

    ids = {eos_token_id(tokenizer, eos_token)}
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(extra if isinstance(extra, (list, tuple)) else [] if extra is None else [extra])
    return sorted(int(i) for i in ids)


def generation_config(max_new_tokens: int, stops: list[int], pad_id: int, **extra):
    """Pure ancestral sampling at T=1: the checkpoint's generation_config.json and transformers' defaults (top_k
    50) must not narrow the distribution, so every warper is set off explicitly."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
                            repetition_penalty=1.0, max_new_tokens=max_new_tokens, eos_token_id=stops,
                            pad_token_id=pad_id, **extra)


def sample_responses(model, prompts: list[list[int]], stops: list[int], pad_id: int, cfg: ProbeConfig
                     ) -> list[list[int]]:
    """T=1 samples (the first stop token included, at most max_response_tokens) of every prompt, seeded."""
    import torch

    gen = generation_config(cfg.max_response_tokens, stops, pad_id)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):  # one length a batch: no padding, the same logits as one prompt alone
        by_len.setdefault(len(p), []).append(i)
    out: list[list[int] | None] = [None] * len(prompts)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(cfg.seed)
        for length in sorted(by_len):
            idx = by_len[length]
            for lo in range(0, len(idx), cfg.batch_size):
                part = idx[lo:lo + cfg.batch_size]
                ids = torch.tensor([prompts[i] for i in part], dtype=torch.long)
                seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gen)
                for i, row in zip(part, seq[:, length:].tolist()):
                    cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
                    out[i] = row[:cut]
    return out  # type: ignore[return-value]


def _mean(xs) -> float:
    return sum(xs) / len(xs)


def probe_checkpoint(model_dir, cfg: ProbeConfig) -> dict:
    """Both probes of one HF checkpoint directory, with per-sample values and a digest of the samples."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from red_megatron.data.chat import load_tokenizer

    t0 = time.perf_counter()
    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(1)  # a fixed thread count: the same logits, hence the same samples, under any load
    hf_logging.disable_progress_bar()  # a weight-loading bar per probe would bury the study's log
    try:
        tok = load_tokenizer(model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        rows, prompts, traces = load_probe_data(tok, cfg)
        stops = stop_token_ids(model, tok, cfg.eos_token)
        pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
        h_sft = response_entropies(model, prompts, traces)
        samples = sample_responses(model, prompts, stops, pad, cfg)
        h_rl = response_entropies(model, prompts, samples)
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
    digest = hashlib.sha256(json.dumps(samples).encode()).hexdigest()
    return {"h_sft": _mean(h_sft), "h_rl": _mean(h_rl), "n": len(rows), "rows": rows,
            "sft_len": _mean([len(t) for t in traces]), "rl_len": _mean([len(s) for s in samples]),
            "rl_truncated": sum(len(s) == cfg.max_response_tokens and s[-1] not in stops for s in samples),
            "stop_token_ids": stops, "h_sft_per_sample": h_sft, "h_rl_per_sample": h_rl,
            "rl_lengths": [len(s) for s in samples], "rl_samples_sha256": digest,
            "seconds": round(time.perf_counter() - t0, 2)}


def weights_digest(model_dir) -> str:
    """sha256 over the checkpoint's weight files (name and bytes), so a retrained checkpoint is probed again."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weight files (*.safetensors, *.bin)")
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def probe_key(model_dir, cfg: ProbeConfig) -> dict:
    return {"checkpoint": str(Path(model_dir).resolve()), "weights_sha256": weights_digest(model_dir),
            **cfg.settings()}


def cached_probe(model_dir, cache_path, cfg: ProbeConfig, log=None) -> dict:
    """``probe_checkpoint`` through ``cache_path``: reused when its key (checkpoint, weights, settings) matches,
    else computed and written atomically. The result carries ``cached`` (True when read)."""
    cache_path = Path(cache_path)
    key = probe_key(model_dir, cfg)
    if cache_path.exists():
        try:
            old = json.loads(cache_path.read_text())
            if old.get("key") == key:
                return {**old["result"], "cached": True}
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a damaged file: compute again
    if log is not None:
        log(f"[probe] {model_dir}: computing (seed {cfg.seed})")
    result = probe_checkpoint(model_dir, cfg)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
    os.replace(tmp, cache_path)
    return {**result, "cached": False}


def probe_targets(out, config: str, seed: int) -> dict[str, tuple[Path, Path]]:
    """{name: (HF checkpoint dir, probe.json)} of a finished cell: "final" for its last checkpoint and, for a
    multi-stage preset, each earlier stage by its directory name (sft_then_grpo: "stage0_sft", RL's start)."""
    d = cell_dir(out, config, seed)
    marker = d / "train.done.json"
    if config in NO_PROBE or not marker.exists():
        return {}
    if config == "base":
        hf = json.loads(marker.read_text()).get("hf")  # the runner's marker names the base it started from
        return {"final": (Path(hf), d / PROBE_FILE)} if hf and (Path(hf) / "config.json").exists() else {}
    stages = stage_dirs(d / "run", preset_of(config))
    out_: dict[str, tuple[Path, Path]] = {}
    for i, st in enumerate(stages):
        if (st / "hf" / "config.json").exists():
            out_["final" if i == len(stages) - 1 else st.name] = (st / "hf", st / PROBE_FILE)
    return out_


def read_probes(out, config: str, seed: int) -> dict[str, dict]:
    """{name: summary} of the cell's probe files that belong to its current checkpoint paths (no computing)."""
    got = {}
    for name, (hf, path) in probe_targets(out, config, seed).items():
        try:
            rec = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if rec.get("key", {}).get("checkpoint") == str(hf.resolve()):
            got[name] = {k: rec["result"][k] for k in SUMMARY_KEYS if k in rec["result"]}
            got[name]["settings"] = {k: rec["key"][k] for k in ("n_rows", "selection", "max_response_tokens", "seed")}
    return got


def ensure_probes(out, configs: list[str], seeds: list[int], cfg: ProbeConfig, log=print) -> list[str]:
    """Compute every missing (or stale) probe of the finished cells; each cell's seed seeds its sampling.
    Returns the probes that failed (named), so a broken checkpoint leaves its claim inconclusive, not the report."""
    failed = []
    for s in seeds:
        for c in configs:
            for name, (hf, path) in probe_targets(out, c, s).items():
                try:
                    cached_probe(hf, path, dataclasses.replace(cfg, seed=s), log)
                except Exception as e:  # noqa: BLE001 - one bad checkpoint must not stop the report
                    failed.append(f"{c}/seed{s}/{name}: {type(e).__name__}: {e}")
                    log(f"[probe] {c} seed {s} {name} failed: {type(e).__name__}: {e}")
    return failed
