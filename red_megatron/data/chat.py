"""Chat templates: prompt messages -> the exact token ids the policy and the engine see.

The prompt is rendered with a chat template (``resolve_chat_template``: the tokenizer's own, a
named one of ``NAMED_TEMPLATES``, a ``.jinja`` file or a literal Jinja string) and
``add_generation_prompt=True`` (so it ends where the assistant turn begins), then encoded
without adding special tokens again: the template already wrote them. Training, rollout
and evaluation all go through here, so the three see byte-identical prompts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# ChatML (Qwen2.5) with a default system turn when the conversation has none.
_CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n__SYSTEM__<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN25_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
LUFFY_SYSTEM = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final solution. "
    "This involves analyzing, summarizing, exploring, reassessing, and refining your thought process through "
    "multiple iterations. Structure your response into two sections: Thought and Solution. In the Thought "
    "section, present your reasoning using the format: \"<think>\\n {thoughts} </think>\\n\". Each thought "
    "should include detailed analysis, brainstorming, verification, and refinement of ideas. After "
    "\"</think>\\n,\" in the Solution section, provide the final, logical, and accurate answer, clearly derived "
    "from the exploration in the Thought section. If applicable, include the answer in \\boxed{} for "
    "closed-form results like multiple choices or mathematical solutions."
)
# data.chat_template names; None stands for the tokenizer's own template
NAMED_TEMPLATES: dict[str, str | None] = {
    "tokenizer": None,
    "qwen25_math": _CHATML.replace("__SYSTEM__", QWEN25_MATH_SYSTEM),
    "luffy": _CHATML.replace("__SYSTEM__", LUFFY_SYSTEM),
}


def chat_template_kind(value: str | None) -> str:
    """How ``data.chat_template`` is read: "tokenizer", "named", "file" or "literal"; ValueError otherwise.

    Never confused: a name of NAMED_TEMPLATES, else a path ending in ``.jinja`` (the file must be
    readable), else a literal Jinja template (it must contain ``{{``).
    """
    if value is None or value == "tokenizer":
        return "tokenizer"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"empty chat template {value!r}: expected a name {sorted(NAMED_TEMPLATES)}, "
                         "a .jinja file or a Jinja template")
    if value in NAMED_TEMPLATES:
        return "named"
    if value.strip().endswith(".jinja") and "{{" not in value:
        p = Path(value.strip()).expanduser()
        if not p.is_file():
            raise ValueError(f"missing chat template file {value!r}: expected an existing, readable .jinja file")
        try:
            p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"unreadable chat template file {value!r}: expected UTF-8 Jinja text ({e})") from None
        return "file"
    if "{{" in value:
        return "literal"
    raise ValueError(f"unknown chat template {value!r}: expected one of {sorted(NAMED_TEMPLATES)}, a .jinja file "
                     "or a literal Jinja template (containing '{{')")


def resolve_chat_template(value: str | None) -> str | None:
    """The Jinja text ``data.chat_template`` stands for; None: the tokenizer's own."""
    kind = chat_template_kind(value)
    if kind == "tokenizer":
        return None
    if kind == "named":
        return NAMED_TEMPLATES[value]
    if kind == "file":
        text = Path(value.strip()).expanduser().read_text(encoding="utf-8")
        if "{{" not in text and "{%" not in text:
            raise ValueError(f"chat template file {value!r} holds no Jinja ('{{{{' or '{{%'): expected a template")
        return text
    return value


def load_tokenizer(model_dir: str | Path):
    """The HF tokenizer saved with a checkpoint (tokenizer.json + tokenizer_config.json)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], chat_template: str | None = None) -> str:
    """The chat-templated prompt text, ending with the assistant turn's opening.

    ``chat_template`` is a ``data.chat_template`` value (see ``resolve_chat_template``).
    """
    template = resolve_chat_template(chat_template) or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the tokenizer has no chat_template; set DataConfig.chat_template "
                         "to a name of NAMED_TEMPLATES, a .jinja file or a Jinja template string")
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
