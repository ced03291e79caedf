"""Launching recipes through NeMo-Run (local torchrun or Slurm). No megatron / vllm imports here:
the launcher validates and submits; the training processes import the heavy stacks."""
from red_megatron.launch.check import check_launch, check_mounts
from red_megatron.launch.spec import LaunchSpec, parse_sweeps

__all__ = ["LaunchSpec", "check_launch", "check_mounts", "parse_sweeps"]
