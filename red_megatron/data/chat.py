"""Chat templates: prompt messages -> the exact token ids the policy and the engine see.

The prompt is rendered with the tokenizer's own chat template and
``add_generation_prompt=True`` (so it ends where the assistant turn begins), then encoded
without adding special tokens again: the template already wrote them. Training, rollout
and evaluation all go through here, so the three see byte-identical prompts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(model_dir: str | Path):
    """The HF tokenizer saved with a checkpoint (tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None = None) -> str:
    """The chat-templated prompt text, ending with the assistant turn's opening."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the tokenizer has no chat_template; set DataConfig.chat_template "
                         "to a Jinja template string")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=template)
    if not isinstance(text, str):  # some versions return a list for a single conversation
        text = text[0]
    return text


def encode_text(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without BOS/EOS added (the template or the caller owns those)."""
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False)
    return [list(ids) for ids in enc["input_ids"]]


def eos_token_id(tokenizer: Any, eos_token: str | None = None) -> int:
    """The id ending a response: ``eos_token`` when given (e.g. ``<|im_end|>``), else the tokenizer's."""
    if eos_token is None:
        tid = tokenizer.eos_token_id
        if tid is None:
            raise ValueError("the tokenizer defines no eos_token; set DataConfig.eos_token")
        return int(tid)
    tid = tokenizer.convert_tokens_to_ids(eos_token)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id
                       and eos_token != tokenizer.unk_token):
        raise ValueError(f"DataConfig.eos_token {eos_token!r} is not a token of this tokenizer")
    return int(tid)
