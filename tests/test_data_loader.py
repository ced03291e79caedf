"""Loader: deterministic epoch shuffles, DP sharding independent of world size, exact resume."""
import json

import pytest

from red_megatron.data.chat import load_tokenizer
from red_megatron.data.dataset import DataConfig, RedDataset
from red_megatron.data.loader import PromptLoader

N = 11


@pytest.fixture(scope="module")
def data(tiny_ckpt_dir, tmp_path_factory):
    tok = load_tokenizer(tiny_ckpt_dir)
    path = tmp_path_factory.mktemp("loader") / "d.jsonl"
    with open(path, "w") as f:
        for i in range(N):
            trace = ("word " * (40 if i % 3 == 0 else 2)) + f"\\boxed{{{i}}}"
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"q{i}"}], "target": [trace],
                                "reward_model": {"ground_truth": str(i)}}) + "\n")
    cfg = DataConfig(path=str(path), answer_check="off", max_response_tokens=20, global_batch_size=4)
    return RedDataset.load(cfg, tok), cfg


def make(data, rank=0, world=1, **over):
    ds, cfg = data
    c = DataConfig(**{**cfg.__dict__, **over})
    return PromptLoader(ds, c, dp_rank=rank, dp_world_size=world)


def rows(batch):
    return [ex.row for ex in batch]


def test_epochs_are_seeded_permutations(data):
    a = make(data)
    assert a.steps_per_epoch == N // 4 == 2
    epoch0 = rows(a.next_batch()) + rows(a.next_batch())
    epoch1 = rows(a.next_batch()) + rows(a.next_batch())
    assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8  # no repeats inside an epoch
    assert epoch0 != epoch1  # a new order each epoch
    assert a.epoch == 2 and a.step_in_epoch == 0
    b = make(data)
    assert [rows(b.next_batch()) for _ in range(4)] == [epoch0[:4], epoch0[4:], epoch1[:4], epoch1[4:]]
    c = make(data, seed=1)
    assert rows(c.next_batch()) + rows(c.next_batch()) != epoch0
    d = make(data, shuffle=False)
    assert rows(d.next_batch()) + rows(d.next_batch()) == list(range(8))


def test_dp_shards_partition_the_global_batch(data):
    one = make(data)
    r0, r1 = make(data, 0, 2), make(data, 1, 2)
    for _ in range(5):
        g = rows(one.next_batch())
        a, b = rows(r0.next_batch()), rows(r1.next_batch())
        assert len(a) == len(b) == 2
        assert a + b == g  # rank r holds the r-th contiguous half: same run at any DP size
    assert r0.global_indices(0, 1) == r1.global_indices(0, 1)


def test_resume_reproduces_the_uninterrupted_order(data):
    ref = make(data, 1, 2)
    expected = [rows(ref.next_batch()) for _ in range(7)]
    first = make(data, 1, 2)
    for _ in range(3):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
    resumed = make(data, 1, 2)
    resumed.load_state_dict(state)
    assert [rows(resumed.next_batch()) for _ in range(4)] == expected[3:]
    assert resumed.state_dict() == ref.state_dict()


def test_resume_refuses_other_data_or_order(data):
    state = make(data).state_dict()
    with pytest.raises(ValueError, match="saved seed=0 but this loader has seed=3"):
        make(data, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="global_batch_size"):
        make(data, global_batch_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="outside"):
        make(data).load_state_dict({**state, "step_in_epoch": 5})


def test_truncated_traces_are_counted(data):
    ds, _ = data
    loader = make(data, shuffle=False)
    batch = loader.next_batch()  # rows 0-3: row 0 and 3 have the long trace
    assert [ex.trace_truncated for ex in batch] == [True, False, False, True]
    assert all(len(ex.trace_ids) <= 20 and ex.trace_ids[-1] == ds.eos_id for ex in batch)
    assert (loader.traces_truncated, loader.traces_seen) == (2, 4)
    assert ds.count_truncated_traces() == 4  # rows 0, 3, 6, 9


@pytest.mark.parametrize("kw,match", [
    ({"world": 3}, "global_batch_size=4 must be divisible by the data-parallel size 3"),
    ({"rank": 2, "world": 2}, "dp_rank must be in"),
    ({"global_batch_size": 12}, "larger than the dataset"),
])
def test_loader_errors(data, kw, match):
    with pytest.raises(ValueError, match=match):
        make(data, kw.pop("rank", 0), kw.pop("world", 1), **kw)
