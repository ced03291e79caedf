"""Start-time checks of what the user points a run at, before megatron, vLLM or any weight loads.

Each refuses with one ``UserError`` shaped ``<what> in <file/field>: <expected>``:
- ``check_model_dir``: the directory, its ``config.json`` (JSON and the supported architectures),
  the tokenizer files (and a chat template when none is configured), and, unless ``weights=False``,
  every safetensors file's header and length (a truncated shard is named without reading weights);
  and that no token id the tokenizer holds reaches config.json's ``vocab_size``;
- ``check_chat_template``: ``data.chat_template`` is None, a Jinja template, a ``.jinja`` file or a
  named template the data module knows; anything else (``hello``) would become every prompt;
- ``check_verify_fn``: ``reward.verify_fn`` imports and is callable (not discovered at the first
  non-exact answer, minutes into the run).
"""
from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

from red_megatron.errors import ModelDirError, UserError

TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("tokenizer.model",))
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def read_json_file(path: Path, what: str) -> dict:
    """A JSON object from ``path``; truncation, bad bytes or a non-object name the file."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"missing {what} in {Path(path).parent}: expected {Path(path).name}") from None
    except UnicodeDecodeError as e:
        raise ModelDirError(f"unreadable {what} in {path}: expected UTF-8 JSON (bad byte at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ModelDirError(f"unreadable {what} in {path}: expected complete JSON ({e.msg} at line {e.lineno} "
                            f"column {e.colno}; truncated?)") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"unreadable {what} in {path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_safetensors_file(path: Path) -> int:
    """Header and length of one safetensors file (no tensor data read); returns its tensor count."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelDirError(f"truncated weights file in {path}: expected a safetensors file "
                                    f"(only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ModelDirError(f"truncated weights file in {path}: expected a safetensors header of {n} bytes, "
                                    f"the file has {size} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelDirError(f"unreadable weights file in {path}: expected a safetensors JSON header") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise ModelDirError(f"unreadable weights file in {path}: tensor {name!r} has no data_offsets") from None
    if 8 + n + end > size:
        raise ModelDirError(f"truncated weights file in {path}: expected {8 + n + end} bytes (header + tensors), "
                            f"found {size}")
    return sum(1 for k in header if k != "__metadata__")


def check_weights(model_dir: Path) -> int:
    """Every safetensors shard the directory names; returns the number of shards checked."""
    from red_megatron.hf.safetensors import INDEX, SINGLE, weight_map

    index = model_dir / INDEX
    if index.is_file():
        try:
            wm = weight_map(model_dir)  # the one index reader
        except ValueError as e:
            raise ModelDirError(str(e)) from None
        if not wm:
            raise ModelDirError(f"unreadable weights index in {index}: expected a non-empty 'weight_map'")
        shards = sorted(set(wm.values()))
        for s in shards:
            if not (model_dir / s).is_file():
                raise ModelDirError(f"missing weights shard in {model_dir}: {index.name} names {s}, which is absent")
    elif (model_dir / SINGLE).is_file():
        shards = [SINGLE]
    else:
        raise ModelDirError(f"missing weights in {model_dir}: expected {SINGLE} or {INDEX}")
    for s in shards:
        check_safetensors_file(model_dir / s)
    return len(shards)


def _tokenizer_ids(model_dir: Path, tok: dict | None, tcfg: dict) -> tuple[int, str] | None:
    """(largest token id, the file that holds it) over the vocabulary and the added tokens."""
    best: tuple[int, str] | None = None

    def see(ids, name):
        nonlocal best
        ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
        if ids and (best is None or max(ids) > best[0]):
            best = (max(ids), name)

    if tok is not None:
        vocab = (tok.get("model") or {}).get("vocab")
        see(vocab.values() if isinstance(vocab, dict) else [], "tokenizer.json")
        see([t.get("id") for t in tok.get("added_tokens") or [] if isinstance(t, dict)], "tokenizer.json")
    elif (model_dir / "vocab.json").is_file():
        see(read_json_file(model_dir / "vocab.json", "tokenizer vocabulary").values(), "vocab.json")
    decoder = tcfg.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        see([int(k) for k in decoder if str(k).isdigit()], "tokenizer_config.json")
    return best


def check_tokenizer_vocab(model_dir: Path, vocab_size: int, tok: dict | None, tcfg: dict) -> None:
    """Every token id the tokenizer can produce must index the model's embedding (config.json's
    vocab_size); a larger one fails deep inside vLLM or the embedding, naming neither file."""
    top = _tokenizer_ids(model_dir, tok, tcfg)
    if top is not None and top[0] >= vocab_size:
        raise ModelDirError(f"tokenizer ids beyond the model's vocabulary in {model_dir}: {top[1]} has token id "
                            f"{top[0]}, config.json has vocab_size={vocab_size}: expected every id < vocab_size")


def check_tokenizer_files(model_dir: Path, *, need_chat_template: bool, vocab_size: int | None = None) -> None:
    if not any(all((model_dir / f).is_file() for f in fs) for fs in TOKENIZER_FILE_SETS):
        raise ModelDirError(f"missing tokenizer files in {model_dir}: expected tokenizer.json (or vocab.json + "
                            f"merges.txt, or tokenizer.model) and tokenizer_config.json")
    tcfg = read_json_file(model_dir / "tokenizer_config.json", "tokenizer config")
    tok = None
    if (model_dir / "tokenizer.json").is_file():
        tok = read_json_file(model_dir / "tokenizer.json", "tokenizer")
    if vocab_size is not None:
        check_tokenizer_vocab(model_dir, vocab_size, tok, tcfg)
    has_template = bool(tcfg.get("chat_template")) or (model_dir / "chat_template.jinja").is_file() or (
        model_dir / "chat_template.json").is_file()
    if need_chat_template and not has_template:
        raise ModelDirError(f"no chat template in {model_dir / 'tokenizer_config.json'}: expected a 'chat_template' "
                            f"(or chat_template.jinja), or set data.chat_template")


def check_model_dir(model_dir, *, field: str = "model_dir", weights: bool = True, need_chat_template: bool = True):
    """Refuse a model dir that cannot load; returns the parsed ``HFModelConfig``. No weights are read."""
    from red_megatron.hf.config import read_hf_config

    p = Path(model_dir)
    if not p.is_dir():
        raise ModelDirError(f"no model directory in {field}={str(model_dir)!r}: expected a Hugging Face checkpoint "
                            f"directory (config.json, safetensors, tokenizer)")
    raw = read_json_file(p / "config.json", "config.json")
    try:
        hf = read_hf_config(raw)
    except (ValueError, KeyError, TypeError) as e:
        msg = str(e).removeprefix("config.json: ")
        raise ModelDirError(f"unsupported model in {p / 'config.json'}: {msg}") from None
    check_tokenizer_files(p, need_chat_template=need_chat_template, vocab_size=hf.vocab_size)
    if weights:
        check_weights(p)
    return hf


def named_chat_templates() -> dict:
    """The named templates of the data module (``data.chat.NAMED_TEMPLATES``; None: the tokenizer's own)."""
    from red_megatron.data import chat

    return dict(chat.NAMED_TEMPLATES)


def check_chat_template(value: str | None, field: str = "data.chat_template") -> None:
    """The same reading as the data module's (``chat.chat_template_kind``), as one UserError naming the field."""
    from red_megatron.data import chat

    try:
        kind = chat.chat_template_kind(value)
        if kind == "file":
            chat.resolve_chat_template(value)  # readable, and holds Jinja
    except ValueError as e:
        msg = str(e)
        for head in ("empty chat template", "missing chat template file", "unreadable chat template file",
                     "unknown chat template", "chat template file"):
            if msg.startswith(head):
                what, _, expected = msg[len(head):].partition(":")
                if head == "unknown chat template":
                    raise UserError(f"{head}{what} in {field}:{expected}") from None
                raise UserError(f"{head} in {field}={value!r}:{expected}") from None
        raise UserError(f"{msg} (in {field})") from None


def check_verify_fn(value: str, field: str = "reward.verify_fn") -> None:
    mod_name, _, fn_name = value.partition(":")
    if not mod_name or not fn_name:
        raise UserError(f"bad function path {value!r} in {field}: expected 'package.module:function'")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's path
        raise UserError(f"unimportable module {mod_name!r} in {field}={value!r}: expected an importable "
                        f"'package.module:function' ({type(e).__name__}: {e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise UserError(f"no function {fn_name!r} in {field}={value!r}: expected a callable in module {mod_name}")
