"""The tiny HF checkpoint: deterministic files that transformers loads like any model.

(vLLM loading and generation from it are tested in tests/test_rollout_engine.py, which shares one
engine across its tests.)
"""
import hashlib
import json

import pytest
import torch

from red_megatron.study.tiny_checkpoint import SPECIAL_TOKENS, TinyCheckpointConfig, make_tiny_checkpoint

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def _digests(d):
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest() for f in FILES}


def test_files_present_and_deterministic(tiny_ckpt_dir, tmp_path):
    for f in FILES:
        assert (tiny_ckpt_dir / f).is_file(), f
    again = make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=0), tmp_path / "again")
    assert _digests(again) == _digests(tiny_ckpt_dir)
    other = make_tiny_checkpoint(TinyCheckpointConfig(arch="qwen2", seed=1), tmp_path / "other")
    d0, d1 = _digests(tiny_ckpt_dir), _digests(other)
    assert d0["model.safetensors"] != d1["model.safetensors"]  # the seed changes the weights ...
    assert d0["tokenizer.json"] == d1["tokenizer.json"]  # ... but not the tokenizer


def test_tokenizer(tiny_ckpt_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_ckpt_dir)
    cfg = json.loads((tiny_ckpt_dir / "config.json").read_text())
    assert len(tok) <= cfg["vocab_size"]
    assert len(tok) >= 0.9 * cfg["vocab_size"], "BPE should be trained close to the requested vocabulary"
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(s) == i
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # byte-level: anything round-trips, including characters never seen in training
    text = "Solve 12x + 7 = -5; déjà vu ∑ 😀 \\boxed{\\frac{3}{4}}"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    # digits one per token, so a tiny model copies and adds digit by digit
    ids = tok.encode("12345", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids] == list("12345")
    msgs = [{"role": "user", "content": "Box the digit 7."}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nBox the digit 7.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 1 and 2 in ids  # <|im_start|> ... <|im_end|> are single special tokens


@pytest.mark.parametrize("arch,tie", [("qwen2", False), ("llama", True), ("qwen3", False)])
def test_transformers_loads_every_weight(tmp_path, arch, tie):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = TinyCheckpointConfig(arch=arch, tie_word_embeddings=tie, seed=3)
    d = make_tiny_checkpoint(cfg, tmp_path / arch)
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    saved = load_file(str(d / "model.safetensors"))
    sd = model.state_dict()
    for name, t in saved.items():
        torch.testing.assert_close(sd[name], t, rtol=0, atol=0)
    assert ("lm_head.weight" in saved) != tie
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
                                    "qwen3": "Qwen3ForCausalLM"}[arch]
    ids = torch.tensor([[1, 50, 60, 70]])
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)
    logits = model(ids).logits
    assert logits.shape == (1, 4, cfg.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("kwargs,field", [
    (dict(head_dim=16, hidden=64), "head_dim"),
    (dict(arch="gpt2"), "arch"),
    (dict(hidden=256), "heads * head_dim"),
    (dict(kv_heads=3), "kv_heads"),
    (dict(vocab_size=100), "vocab_size"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("*", r"\*")):
        TinyCheckpointConfig(**kwargs)


def test_script(tmp_path):
    from scripts.make_tiny_checkpoint import main

    out = main(["--out", str(tmp_path / "llama"), "--arch", "llama", "--hidden", "64", "--heads", "2",
                "--kv-heads", "1", "--head-dim", "32", "--layers", "1", "--intermediate", "96"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] == 64 and cfg["num_key_value_heads"] == 1
