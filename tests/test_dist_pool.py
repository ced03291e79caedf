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
