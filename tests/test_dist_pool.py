import torch
import torch.distributed as dist


def _allreduce_rank() -> float:
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return t.item()


def _raise_on_rank1() -> int:
    if dist.get_rank() == 1:
        raise ValueError("boom on rank 1")
    return 0


def test_pool_runs_collectives(dist2):
    assert dist2.run(_allreduce_rank) == [3.0, 3.0]


def test_pool_reports_worker_errors(dist2):
    import pytest

    with pytest.raises(RuntimeError, match="boom on rank 1"):
        dist2.run(_raise_on_rank1)
    # the pool stays usable after a failure
    assert dist2.run(_allreduce_rank) == [3.0, 3.0]


def _threads_after_cycles(n: int) -> int:
    import os

    from red_megatron.policy.parallel import destroy_model_parallel, init_model_parallel

    for _ in range(n):
        init_model_parallel(tp=2, pp=1)
        destroy_model_parallel()
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def test_model_parallel_teardown_frees_its_groups(dist2):
    """Each init creates ~20 gloo groups with their own threads; teardown must free them, or the
    shared workers grow without bound (2,500 threads each were seen before the fix)."""
    import pytest

    if not __import__("os").path.isdir("/proc/self/task"):
        pytest.skip("needs /proc to count threads")
    base = dist2.run(_threads_after_cycles, 1)
    after = dist2.run(_threads_after_cycles, 8)
    assert all(a - b <= 4 for a, b in zip(after, base)), f"threads grew from {base} to {after}"
