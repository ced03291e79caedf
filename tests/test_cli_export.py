"""red-export end to end: a checkpoint step of a run dir becomes an HF directory holding that step's
weights (not the base model's); a checkpoint missing a part and NaN base weights are refused in one
line. Real Megatron (gloo, one process), so each step runs in a subprocess as red-export would."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Make a run dir as red-train leaves it: run_config.json + checkpoints/step_00000003 of a policy whose
# final norm was doubled (so the export must come from the checkpoint, not from model_dir).
MAKE_RUN = textwrap.dedent("""
    import dataclasses, json, sys, torch
    from pathlib import Path
    from configs import get_recipe
    from red_megatron.overrides import apply_overrides
    from red_megatron.policy import MegatronPolicy

    model_dir, run_dir = sys.argv[1], Path(sys.argv[2])
    cfg = apply_overrides(get_recipe("tiny_cpu"), [f"model_dir={model_dir}", f"run_dir={run_dir}",
                                                    "policy.dtype=float32"])
    policy = MegatronPolicy.from_hf(model_dir, cfg.policy, seed=0)
    with torch.no_grad():
        for name, p in policy.chunks[0].named_parameters():
            if name == "decoder.final_layernorm.weight":
                p.mul_(2.0)
    policy.save_checkpoint(run_dir / "checkpoints", 3, {"step": 3})
    (run_dir / "run_config.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "effective": {}}))
""")


def _env():
    return {**{k: v for k, v in os.environ.items() if k not in ("RED_DEBUG", "RANK", "WORLD_SIZE")},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}  # an inherited PYTHONPATH kept: the compat tier's megatron-core


def _run(args, timeout=300):
    return subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_export_a_checkpoint_step_to_an_hf_dir(tmp_path, tiny_ckpt_dir):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    p = _run([sys.executable, "-c", MAKE_RUN, str(tiny_ckpt_dir), str(run_dir)])
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "step_00000003"
    meta = json.loads((ckpt / "meta.json").read_text())
    parts = meta["dist_parts"]  # what this megatron-core wrote
    # the subprocess ran the megatron-core this process imports (the compat tier's, when it runs this file)
    assert meta["megatron_core"] == version("megatron-core"), meta
    assert {"metadata.json", ".metadata"} <= set(parts) and all((ckpt / "dist" / f).is_file() for f in parts)

    out = tmp_path / "hf3"
    p = _run([sys.executable, "-m", "red_megatron.cli.export", str(run_dir), "--step", "3", "--out", str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step 3" in p.stdout and str(out) in p.stdout
    # a quiet console: one line; megatron's warnings went to the run dir's library log (19 lines before)
    assert p.stdout.count("\n") == 1 and p.stderr == "", p.stderr[-2000:]
    assert (run_dir / "logs" / "library.log").is_file()
    base, got = load_file(str(tiny_ckpt_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(got) == set(base)
    for k in base:
        want = base[k] * 2 if k == "model.norm.weight" else base[k]
        assert bool((got[k].float() == want.float()).all()), k  # the checkpoint's weights, fp32 exact
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())["vocab_size"]

    # NaN in the base checkpoint: refused at load, naming the first tensor
    from safetensors.torch import save_file

    nan_dir = tmp_path / "nan_model"
    shutil.copytree(tiny_ckpt_dir, nan_dir)
    w = dict(base)
    w["model.layers.1.mlp.down_proj.weight"] = w["model.layers.1.mlp.down_proj.weight"].clone()
    w["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(w, str(nan_dir / "model.safetensors"), metadata={"format": "pt"})
    p = _run([sys.executable, "-m", "red_megatron.cli.export", str(run_dir), f"model_dir={nan_dir}"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-3000:]  # after megatron started: one line
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite values (NaN/Inf) in tensor model.layers.1.mlp.down_proj.weight"), last

    # a damaged part is named exactly, before megatron-core reads the shards (its own error names no file)
    from red_megatron.policy.checkpoint import _read_meta

    shard = max((ckpt / "dist").glob("*.distcp"), key=lambda f: f.stat().st_size)
    damaged = [(shard, rf"truncated checkpoint part in .*{shard.name}: expected at least \d+ bytes"),
               (ckpt / "dist" / ".metadata", r"unreadable checkpoint part in .*dist/\.metadata")]
    if (ckpt / "dist" / "common.pt").is_file():  # megatron-core 0.16
        damaged.append((ckpt / "dist" / "common.pt", r"truncated checkpoint part in .*common\.pt"))
    for f, msg in damaged:
        whole = f.read_bytes()
        f.write_bytes(whole[: len(whole) // 2])
        with pytest.raises(ValueError, match=msg):
            _read_meta(ckpt)
        if f == shard:  # and through the console script: one line, exit 2
            p = _run([sys.executable, "-m", "red_megatron.cli.export", str(run_dir), "--out", str(tmp_path / "x")])
            last = p.stderr.strip().splitlines()[-1]
            assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-3000:]
            assert last.startswith("error: truncated checkpoint part in") and shard.name in last, last
        f.write_bytes(whole)
    assert _read_meta(ckpt)["step"] == 3

    # a checkpoint missing a part: refused at load, naming the part
    (ckpt / "dist" / "metadata.json").unlink()
    p = _run([sys.executable, "-m", "red_megatron.cli.export", str(run_dir)])
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: missing checkpoint part in") and "dist/metadata.json" in last, last
