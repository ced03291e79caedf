"""HF <-> Megatron weights: export -> import round trip, the streaming generator, and clear errors.

Multi-rank parts run on the dist2 pool; error paths of the lazy reader and config parsing run
in-process (no megatron needed).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.policy_model_helpers import make_tiny, roundtrip_worker, stream_worker


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_convert")
    return {n: make_tiny(n, root) for n in ("qwen2_tied", "qwen3", "llama")}


def _hf_state(d: Path) -> dict:
    return load_file(str(d / "model.safetensors"))


@pytest.mark.dist
@pytest.mark.parametrize("name,tp,pp", [("qwen2_tied", 2, 1), ("qwen3", 1, 2)])
def test_export_import_round_trip_is_bit_exact(dist2, tiny, tmp_path, name, tp, pp):
    src = tiny[name]
    out = tmp_path / "export"
    r0, r1 = dist2.run(roundtrip_worker, str(src), str(out), tp, pp)
    orig, back = _hf_state(src), _hf_state(out)
    assert orig.keys() == back.keys()
    for k, v in orig.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), f"{k} changed in the export"
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"):
        assert (out / f).is_file(), f"{f} missing from the export"
    cfg_src, cfg_out = json.loads((src / "config.json").read_text()), json.loads((out / "config.json").read_text())
    assert {k: v for k, v in cfg_out.items() if k != "torch_dtype"} == \
           {k: v for k, v in cfg_src.items() if k != "torch_dtype"}
    for r in (r0, r1):  # importing the export gives the same Megatron parameters bit for bit
        assert r["a"].keys() == r["b"].keys()
        for k in r["a"]:
            assert torch.equal(r["a"][k], r["b"][k]), f"megatron param {k} differs after re-import"


@pytest.mark.dist
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_stream_hf_weights_equals_hf_state_dict_on_every_rank(dist2, tiny, tp, pp):
    src = tiny["llama"]
    ref = _hf_state(src)
    outs = dist2.run(stream_worker, str(src), tp, pp)
    for rank, o in enumerate(outs):
        names = [n for n, _ in o["streamed"]]
        assert names == [n for n, _, _ in o["specs"]], "stream order must equal hf_weight_specs order"
        assert sorted(names) == sorted(ref), f"rank {rank}: streamed names differ from the HF checkpoint"
        for (n, t), (_, shape, dtype) in zip(o["streamed"], o["specs"]):
            assert tuple(t.shape) == tuple(shape) and t.dtype == dtype, n
            assert torch.equal(t, ref[n]), f"rank {rank}: {n} differs from the HF tensor"


def test_hf_weight_specs_cover_the_checkpoint_in_order(tiny):
    from red_megatron.policy.convert import hf_weight_specs

    for name, d in tiny.items():
        ref = _hf_state(d)
        specs = hf_weight_specs(d, dtype=torch.float32)
        assert {n: tuple(s) for n, s, _ in specs} == {n: tuple(t.shape) for n, t in ref.items()}, name
        assert specs[0][0] == "model.embed_tokens.weight"
        assert ("lm_head.weight" in [n for n, _, _ in specs]) == (name != "qwen2_tied")


def _copy_with(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    sd = _hf_state(dst)
    edit(sd)
    save_file(sd, str(dst / "model.safetensors"))
    return dst


def _load_errors(d: Path):
    """Run the converter's checks that need no model: names, then every unit's shard read."""
    from red_megatron.policy.convert import _check_names, _LazyCheckpoint, _read_local, weight_units
    from red_megatron.hf.config import read_hf_config

    hf = read_hf_config(d)
    ck = _LazyCheckpoint(d)
    _check_names(ck, hf)
    for u in weight_units(hf):
        _read_local(ck, u, hf, 0, 2)


def test_missing_extra_and_misshaped_tensors_are_named(tiny, tmp_path):
    from red_megatron.policy.convert import WeightMismatchError

    src = tiny["qwen3"]
    _load_errors(src)  # the untouched checkpoint passes
    d = _copy_with(src, tmp_path / "missing", lambda sd: sd.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(WeightMismatchError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight"):
        _load_errors(d)
    d = _copy_with(src, tmp_path / "extra", lambda sd: sd.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}))
    with pytest.raises(WeightMismatchError, match=r"q_proj\.bias"):
        _load_errors(d)
    d = _copy_with(src, tmp_path / "shape",
                   lambda sd: sd.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(255, 128)}))
    with pytest.raises(WeightMismatchError, match=r"up_proj\.weight.*\(255, 128\).*\(256, 128\)"):
        _load_errors(d)


def test_sharded_checkpoint_with_index_reads_like_a_single_file(tiny, tmp_path):
    """A multi-file checkpoint (index.json) gives the same shards as the single file."""
    from red_megatron.policy.convert import _LazyCheckpoint, _read_local, weight_units
    from red_megatron.hf.config import read_hf_config

    src = tiny["llama"]
    d = tmp_path / "sharded"
    shutil.copytree(src, d)
    sd = _hf_state(d)
    (d / "model.safetensors").unlink()
    names = sorted(sd)
    half = len(names) // 2
    wm = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in part}, str(d / fname))
        wm.update({k: fname for k in part})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    hf = read_hf_config(d)
    a, b = _LazyCheckpoint(src), _LazyCheckpoint(d)
    for u in weight_units(hf):
        for r in (0, 1):
            assert torch.equal(_read_local(a, u, hf, r, 2), _read_local(b, u, hf, r, 2)), u.hf_names


def test_hf_directory_writer_shards_and_indexes(tiny, tmp_path):
    """Small max_shard_bytes: several shards + index.json, read back equal; tokenizer copied."""
    from red_megatron.policy.convert import _LazyCheckpoint
    from red_megatron.policy.hf_export import write_hf_directory

    src = tiny["qwen3"]
    ref = _hf_state(src)
    raw = json.loads((src / "config.json").read_text())
    out = write_hf_directory(iter(ref.items()), raw, tmp_path / "out", src_dir=src, max_shard_bytes=300_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((out / f).is_file() for f in files)
    assert not list(out.glob("*.tmp")) and not (out / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ref.values())
    ck = _LazyCheckpoint(out)
    assert ck.names() == set(ref)
    for k, v in ref.items():
        assert torch.equal(ck.slice(k)[:], v), k
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    nothing = write_hf_directory(iter(ref.items()), raw, tmp_path / "nowrite", write=False)
    assert not nothing.exists(), "a non-writing rank must not create files"
