"""RunConfig: the whole configuration of one RED run, as a recipe in configs/ returns it.

Each section is the component's own typed config (validated where it is defined); this
class adds the run's own fields and the checks that span sections. ``check_world`` adds the
checks that need the launch (world size) and the checkpoint (head counts); it runs before
any model or engine is built, so a config that cannot work fails in seconds, naming fields.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from red_megatron.algo.config import AlgoConfig
from red_megatron.algo.presets import preset_stages
from red_megatron.data.dataset import DataConfig
from red_megatron.eval.protocol import EvalConfig
from red_megatron.metrics import MetricsConfig
from red_megatron.policy.config import PolicyConfig, check_expert_grid
from red_megatron.reward.scorer import RewardConfig
from red_megatron.rollout.config import RolloutConfig


@dataclass(kw_only=True)
class EvalRunConfig:
    """The evaluation during a run (eval.every), of the preset study and of red-eval: the paper's protocol."""

    data_path: str | None = None  # None: no evaluation; a parquet/JSONL in the eval schema
    schema: str = "openr1"  # the eval file's layout: 'openr1' or 'problem_answer', as data.schema
    # N: evaluate every N steps and after the last one with the run's engine, into run_dir/eval (0: off)
    every: int = 0
    periodic_limit: int | None = None  # unique problems of the evaluations before the last (None: the protocol's)
    # with every: also evaluate the starting weights (step 0, before the first update; a fresh run only) with
    # the last evaluation's protocol, the baseline of the table
    at_start: bool = False
    protocol: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 0:
            raise ValueError(f"eval.every must be an int >= 0 (0: no evaluation in training), got {self.every!r}")
        if not isinstance(self.at_start, bool):
            raise ValueError(f"eval.at_start must be a bool (true/false), got {self.at_start!r}")
        if self.at_start and not self.every:
            raise ValueError("eval.at_start=true evaluates the starting weights for the table of eval.every: set "
                             "eval.every (e.g. to steps, for a before/after pair)")
        if self.every and self.data_path is None:
            raise ValueError(f"eval.every={self.every} needs eval.data_path (the file to evaluate on)")
        if self.periodic_limit is not None and (not isinstance(self.periodic_limit, int) or self.periodic_limit < 1):
            raise ValueError(f"eval.periodic_limit must be an int >= 1 or None, got {self.periodic_limit!r}")


@dataclass(kw_only=True)
class RunConfig:
    name: str = "red"  # the run's label in logs, plots and the launcher's job names
    run_dir: str = "runs/red"  # where metrics.jsonl, checkpoints/, logs/, run_config.json and hf/ go (docs/RUNS.md)
    model_dir: str  # the initial policy: an HF directory (config.json, safetensors, tokenizer)
    seed: int = 0  # megatron's RNG and the rollout sampling seeds derive from it (the data order: data.seed)
    steps: int = 10  # optimiser steps (one per rollout batch, RED_SPEC step 7)
    checkpoint_every: int = 0  # 0: only at the end
    # also save when this many minutes passed since the last save (0: off); with checkpoint_every,
    # whichever comes first
    checkpoint_every_minutes: float = 0.0
    # stop (one error line, exit 2) after this many steps in a row skipped for a non-finite loss or gradient,
    # or when every step of the run was skipped (0: never stop; the skipped steps leave the weights untouched)
    max_skipped_in_a_row: int = 5
    # continue from run_dir/checkpoints/latest when it exists; a changed schedule (lr, steps, warm-up,
    # decay) applies from there
    resume: bool = True
    # resume=false in a run_dir holding another run's checkpoints/metrics: delete them first (else refused)
    overwrite: bool = False
    export_hf: bool = True  # write the final policy as an HF directory (run_dir/hf)
    use_preset_schedule: bool = True  # a preset's own lr/epochs (sft: 5e-5, 3 epochs) replace policy.lr/steps
    # Debugging and layout parity: write each step's rollouts (all replicas) to a directory, or train on
    # rollouts recorded so, at any layout, instead of sampling (the engine is still refit every step).
    record_experience_dir: str | None = None
    # train on the rollouts record_experience_dir wrote (same steps), at any layout
    replay_experience_dir: str | None = None
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalRunConfig = field(default_factory=EvalRunConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"RunConfig.steps must be an int >= 1, got {self.steps!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"RunConfig.checkpoint_every must be an int >= 0 (0: at the end only), "
                             f"got {self.checkpoint_every!r}")
        if not isinstance(self.checkpoint_every_minutes, (int, float)) or not self.checkpoint_every_minutes >= 0:
            raise ValueError(f"RunConfig.checkpoint_every_minutes must be a number >= 0 (0: off), "
                             f"got {self.checkpoint_every_minutes!r}")
        if not isinstance(self.max_skipped_in_a_row, int) or self.max_skipped_in_a_row < 0:
            raise ValueError(f"RunConfig.max_skipped_in_a_row must be an int >= 0 (0: never stop), "
                             f"got {self.max_skipped_in_a_row!r}")
        need = self.data.max_prompt_tokens + self.data.max_response_tokens
        # a micro-batch holds whole sequences; with CP each rank computes 1/cp of them, so the budget is
        # per CP rank of the padded sequence (padded to a multiple of 2·cp)
        cp = self.policy.cp
        per_rank = -(-need // (2 * cp)) * 2 if cp > 1 else need
        if self.policy.micro_batch_tokens < per_rank:
            per = f" per context-parallel rank (policy.cp={cp})" if cp > 1 else ""
            raise ValueError(f"policy.micro_batch_tokens={self.policy.micro_batch_tokens} is below the longest "
                             f"sequence the data allows{per}, data.max_prompt_tokens + data.max_response_tokens "
                             f"= {need}{f' ({per_rank} a rank)' if cp > 1 else ''} (a micro-batch holds whole "
                             f"sequences)")
        if any(s.online for s in preset_stages(self.algo.preset)) and self.rollout.max_model_len < need:
            raise ValueError(f"rollout.max_model_len={self.rollout.max_model_len} is below data.max_prompt_tokens + "
                             f"data.max_response_tokens = {need}")
        if self.policy.lm_head_fp32 != self.rollout.lm_head_fp32:
            on, off = ("policy", "rollout") if self.policy.lm_head_fp32 else ("rollout", "policy")
            warnings.warn(f"{on}.lm_head_fp32=true but {off}.lm_head_fp32=false: only one side computes its logits "
                          f"in fp32, so the train/inference log-prob gap it is meant to close stays; set both",
                          stacklevel=2)
        if self.algo.routing_replay == "rollout" and not self.rollout.return_routing:
            raise ValueError("algo.routing_replay='rollout' needs rollout.return_routing=true (and "
                             "rollout.enable_prefix_caching=false): the engine must return each sample's experts")
        if self.eval.every and (not all(s.online for s in preset_stages(self.algo.preset)) or
                                self.rollout.placement != "colocated" or self.rollout.tp_infer != 1):
            # the trainer refused it only once megatron had built the policy (issue 29: validate before start)
            raise ValueError(f"eval.every={self.eval.every} evaluates with rank 0's own engine: it needs an online "
                             f"preset (not {self.algo.preset!r}), rollout.placement='colocated' and "
                             f"rollout.tp_infer=1 (use red-eval on the exported checkpoints otherwise)")
        if self.eval.data_path is not None and self.eval.protocol.max_tokens + self.data.max_prompt_tokens > \
                self.rollout.max_model_len:
            raise ValueError(f"eval.protocol.max_tokens={self.eval.protocol.max_tokens} + data.max_prompt_tokens="
                             f"{self.data.max_prompt_tokens} exceeds rollout.max_model_len={self.rollout.max_model_len}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.run_dir) / "checkpoints"


def check_layout(cfg: RunConfig, world_size: int) -> int:
    """World = TP × PP × DP, the prompt batch against DP, the rollout placement; returns the DP size.
    No files read (the launcher checks this half on the submitting machine)."""
    from red_megatron.rollout.placement import check_engines, check_placement

    tp, pp, cp = cfg.policy.tp, cfg.policy.pp, cfg.policy.cp
    if world_size % (tp * pp * cp) != 0:
        what = f"policy.tp={tp} × policy.pp={pp}" + (f" × policy.cp={cp}" if cp > 1 else "")
        raise ValueError(f"{what} must divide the world size {world_size}")
    dp = world_size // (tp * pp * cp)
    check_expert_grid(world_size, tp=tp, pp=pp, ep=cfg.policy.ep)
    if cfg.data.global_batch_size % dp != 0:
        raise ValueError(f"data.global_batch_size={cfg.data.global_batch_size} (prompts per step) must be divisible "
                         f"by the data-parallel size {dp} (world {world_size} / tp {tp} / pp {pp}"
                         + (f" / cp {cp})" if cp > 1 else ")"))
    r = cfg.rollout
    check_engines(placement=r.placement, tp_infer=r.tp_infer, executor=r.executor, num_engines=r.num_engines,
                  max_staleness=r.max_staleness, global_batch_size=cfg.data.global_batch_size,
                  engine_devices=r.engine_devices, partial=r.partial, engine_launch=r.engine_launch)
    if r.partial and r.stale_samples == "mask" and cfg.algo.off_policy == "none":
        raise ValueError("rollout.stale_samples='mask' trains too-old tokens at weight 0 through the off-policy "
                         "weights: it needs algo.off_policy 'auto' or 'tis', got 'none'")
    if r.placement == "disaggregated" and cfg.replay_experience_dir is not None:
        raise ValueError("replay_experience_dir trains on recorded rollouts: it needs rollout.placement='colocated' "
                         "(disaggregated engines would generate nothing)")
    if any(s.online for s in preset_stages(cfg.algo.preset)) and r.placement == "colocated":
        check_placement(world_size=world_size, tp_infer=r.tp_infer, executor=r.executor)
    return dp


def check_checkpoint(cfg: RunConfig) -> None:
    """TP, PP and vLLM's TP against the checkpoint's heads and layers, and the engine's window against
    its positions (reads config.json through the one typed parser, red_megatron.hf)."""
    from red_megatron.hf.config import read_hf_config

    if not (Path(cfg.model_dir) / "config.json").is_file():
        raise ValueError(f"model_dir={cfg.model_dir!r}: no config.json there (expected a Hugging Face checkpoint)")
    hf = read_hf_config(cfg.model_dir)
    hf.check_megatron_tp(cfg.policy.tp)
    hf.check_pp(cfg.policy.pp)
    hf.check_ep(cfg.policy.ep)
    if (cfg.algo.routing_replay == "rollout" or cfg.rollout.return_routing) and not hf.is_moe:
        raise ValueError(f"algo.routing_replay / rollout.return_routing need a mixture-of-experts checkpoint; "
                         f"{cfg.model_dir} is {hf.architecture}")
    online = any(s.online for s in preset_stages(cfg.algo.preset))
    if online:
        hf.check_vllm_tp(cfg.rollout.tp_infer)
    window = cfg.rollout.max_model_len if online else cfg.data.max_prompt_tokens + cfg.data.max_response_tokens
    field_name = "rollout.max_model_len" if online else "data.max_prompt_tokens + data.max_response_tokens"
    if window > hf.max_position_embeddings:
        raise ValueError(f"{field_name}={window} exceeds the checkpoint's max_position_embeddings="
                         f"{hf.max_position_embeddings} ({cfg.model_dir}/config.json)")


def check_world(cfg: RunConfig, world_size: int) -> int:
    """The run validator: every rule that needs the launch (world size) or the checkpoint, applied
    once, before any model or engine is built (the rules on the config alone ran when it was made);
    one ValueError naming the fields. Returns the data-parallel size (check_layout's)."""
    from red_megatron.config_values import check_values

    check_values(cfg)
    dp = check_layout(cfg, world_size)
    check_checkpoint(cfg)
    check_resume(cfg)
    return dp


def check_resume(cfg: RunConfig) -> None:
    """The checkpoint a resume would follow: a malformed ``latest`` (a directory, garbage, a missing
    step) is refused here, never read as "no checkpoint" (a retrain from step 0 over the run's logs);
    so are saved checkpoints without any ``latest`` beside logged metrics."""
    root = cfg.checkpoint_dir
    if not (cfg.resume and root.is_dir()):
        return
    from red_megatron.errors import CheckpointError
    from red_megatron.policy.checkpoint import LATEST, resolve_checkpoint

    if resolve_checkpoint(root) is not None:
        return
    saved = sorted(p.name for p in root.glob("step_*") if (p / "meta.json").is_file())
    metrics = Path(cfg.run_dir) / "metrics.jsonl"
    if saved and metrics.is_file() and metrics.stat().st_size > 0:
        raise CheckpointError(f"checkpoints without a pointer in {root}: {saved[-1]} is saved but there is no "
                              f"'{LATEST}', and {metrics} holds logged steps; a start from step 0 would retrain over "
                              f"them: expected {root / LATEST} naming the step to resume from (or another run_dir)")


def save_run_config(cfg: RunConfig, run_dir, **effective) -> Path:
    """Write ``run_dir/run_config.json``: every field of the resolved config (recipe + overrides) and the
    values the run derived from it (``effective``: steps, lr), so a run dir says how it was made."""
    path = Path(run_dir) / "run_config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"config": asdict(cfg), "effective": effective}, indent=1, default=str))
    tmp.replace(path)
    return path
