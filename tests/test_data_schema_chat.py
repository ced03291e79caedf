"""Data (issue 20): each schema's own default keys (also through overrides), system_prompt with every
schema, chat_template as a name / .jinja file / literal (never confused), and the warning when offline
traces are cut before their \\boxed{} answer."""
import json
import warnings

import pytest

from red_megatron.data import chat
from red_megatron.data.chat import load_tokenizer
from red_megatron.data.dataset import DataConfig, RedDataset
from red_megatron.overrides import apply_overrides

TRACE = "2 + 3 = 5, so the answer is \\boxed{5}."


@pytest.fixture(scope="module")
def tok(tiny_ckpt_dir):
    return load_tokenizer(tiny_ckpt_dir)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def openr1_row(i=0, system=None, target=TRACE):
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": f"2+{i}?"}]
    return {"prompt": msgs, "target": [target], "reward_model": {"ground_truth": str(2 + i)}}


def test_schema_override_switches_to_that_schemas_keys(tmp_path, tok):
    from configs import get_recipe

    path = write_jsonl(tmp_path / "pa.jsonl", [{"problem": "1+1?", "answer": "2", "solution": "\\boxed{2}"}])
    cfg = apply_overrides(get_recipe("tiny_cpu"), [f"data.path={path}", "data.schema=problem_answer"])
    assert (cfg.data.answer_field, cfg.data.target_field) == ("answer", "solution")
    ds = RedDataset.load(dataclass_replace(cfg.data, global_batch_size=1, max_prompt_tokens=512), tok)
    assert ds[0].gold == "2"  # today's main: missing field 'reward_model.ground_truth'
    # explicit keys still win, and the run_config round trip keeps None (the schema's default)
    cfg2 = apply_overrides(cfg, ["data.answer_key=final"])
    assert cfg2.data.answer_field == "final" and cfg.data.answer_key is None


def dataclass_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_system_prompt_honoured_by_both_schemas(tmp_path, tok):
    rows = [openr1_row(0, system="old system turn"), openr1_row(1)]
    ds = RedDataset.load(DataConfig(path=write_jsonl(tmp_path / "o.jsonl", rows), global_batch_size=1,
                                    system_prompt="Be brief."), tok)
    for i in range(2):
        assert ds[i].messages[0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in ds[i].messages] == ["system", "user"]
        assert "Be brief." in tok.decode(ds[i].prompt_ids)
    pa = write_jsonl(tmp_path / "p.jsonl", [{"problem": "1+1?", "answer": "2"}])
    ds = RedDataset.load(DataConfig(path=pa, schema="problem_answer", require_trace=False, global_batch_size=1,
                                    system_prompt="Be brief."), tok)
    assert ds[0].messages[0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValueError, match="DataConfig.system_prompt"):
        DataConfig(path=pa, system_prompt="  ")


def test_chat_template_kinds_are_never_confused(tmp_path, tok):
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}=>")
    assert chat.chat_template_kind(None) == chat.chat_template_kind("tokenizer") == "tokenizer"
    assert chat.chat_template_kind("qwen25_math") == "named" and chat.chat_template_kind("luffy") == "named"
    assert chat.chat_template_kind(str(jinja)) == "file"
    assert chat.chat_template_kind("{{ messages[0]['content'] }}") == "literal"
    for bad, match in (("hello", "unknown chat template"), (str(tmp_path / "no.jinja"), "missing chat template file"),
                       ("", "empty chat template")):
        with pytest.raises(ValueError, match=match):
            chat.chat_template_kind(bad)
    path = write_jsonl(tmp_path / "o.jsonl", [openr1_row(0)])

    def prompt(template):
        ds = RedDataset.load(DataConfig(path=path, global_batch_size=1, chat_template=template), tok)
        return tok.decode(ds[0].prompt_ids)

    assert prompt(str(jinja)) == "[2+0?]=>"  # the file's template, not its path as the prompt
    own = prompt(None)
    assert prompt("tokenizer") == own
    math = prompt("qwen25_math")
    assert math.startswith("<|im_start|>system\nPlease reason step by step") and math.endswith("<|im_start|>assistant\n")
    assert chat.LUFFY_SYSTEM[:40] in prompt("luffy")
    assert prompt("{{ messages[0]['content'] }}!") == "2+0?!"


def test_cli_check_and_data_module_agree(tmp_path):
    from red_megatron.cli.checks import check_chat_template, named_chat_templates
    from red_megatron.errors import UserError

    assert set(named_chat_templates()) == set(chat.NAMED_TEMPLATES) >= {"qwen25_math", "luffy", "tokenizer"}
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{{ messages }}")
    for ok in (None, "tokenizer", "qwen25_math", str(jinja), "{{ messages }}"):
        check_chat_template(ok)
    for bad in ("hello", str(tmp_path / "absent.jinja"), "{% if x %}no output{% endif %}"):
        with pytest.raises(UserError, match="data.chat_template"):
            check_chat_template(bad)
        with pytest.raises(ValueError):
            chat.chat_template_kind(bad)


def test_traces_cut_before_their_answer_warn_with_counts(tmp_path, tok):
    long_answer_last = " ".join(["step"] * 100) + " \\boxed{5}"
    long_answer_first = "\\boxed{5} " + " ".join(["step"] * 100)
    rows = [openr1_row(0, target=long_answer_last), openr1_row(1, target=long_answer_last),
            openr1_row(2, target=long_answer_first), openr1_row(3)]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    limit = len(tok(TRACE, add_special_tokens=False)["input_ids"]) + 1
    with pytest.warns(UserWarning, match=r"3 of 4 offline traces .* 2 of them are cut before their \\boxed\{\}"):
        ds = RedDataset.load(DataConfig(path=path, global_batch_size=1, max_response_tokens=limit), tok)
    assert ds.stats.traces_truncated == 3 and ds.stats.traces_cut_before_answer == [0, 1]
    assert ds.count_truncated_traces() == 3
    with warnings.catch_warnings():  # a limit that keeps every answer: no warning
        warnings.simplefilter("error")
        ds = RedDataset.load(DataConfig(path=path, global_batch_size=1, max_response_tokens=512), tok)
    assert ds.stats.traces_truncated == 0
