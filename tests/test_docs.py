"""The docs stand on their own and stay true: docs/CONFIG.md is what `red-train --help-config` prints, the
README links the project's own docs (not ../shared), its examples parse and validate, tests find external
data through RED_SHARED_DATA only."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_config_reference_is_up_to_date():
    from red_megatron.cli.config_doc import config_reference

    text = config_reference()
    assert (REPO / "docs" / "CONFIG.md").read_text() == text, (
        "docs/CONFIG.md is stale: regenerate it with `red-train --help-config > docs/CONFIG.md`")
    for field in ("data.chat_template", "metrics.log_every", "policy.tp", "algo.preset", "model_dir"):
        assert f"| `{field}` |" in text, field


def test_help_config_option_prints_the_reference():
    p = subprocess.run([sys.executable, "-m", "red_megatron.cli.train", "--help-config"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (REPO / "docs" / "CONFIG.md").read_text()


def test_readme_sections_and_links():
    for head in ("## Quickstart on a real model", "## Data formats", "## Configuration reference",
                 "## Supported models and layouts", "## FAQ / troubleshooting", "## License and citation"):
        assert head in README, head
    assert README.startswith("# red-megatron\n\n```bash\nmake demo   #") and "\nmake test   #" in README
    assert "../shared/RED_SPEC" not in README and "../shared/ARCHITECTURE" not in README  # docs/ALGORITHM.md instead
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        if not link.startswith("http"):
            assert (REPO / link).exists(), f"README links to {link}, which does not exist"
    for needed in ("docs/ALGORITHM.md", "docs/CONFIG.md", "LICENSE", "CITATION.cff", "--help-config", "--check"):
        assert needed in README, needed
    algo = (REPO / "docs" / "ALGORITHM.md").read_text()
    for term in ("w = clip(dH_sft / dH_rl, 1, G)", "p_off = sg(p) + (1 - sg(p)) * rbar", "is_offline"):
        assert term in algo, term


def test_readme_data_format_examples_load(tmp_path):
    from red_megatron.data.dataset import DataConfig, read_records

    section = README[README.index("## Data formats"):README.index("## Configuration reference")]
    examples = re.findall(r"```json\n(.*?)\n```", section, re.S)
    assert len(examples) == 2
    for schema, ex in zip(("openr1", "problem_answer"), examples):
        path = tmp_path / f"{schema}.jsonl"
        path.write_text(ex + "\n")
        json.loads(ex)
        (rec,) = read_records(DataConfig(path=str(path), schema=schema))
        assert rec.gold == "5" and rec.trace.endswith("\\boxed{5}.")


def test_readme_slurm_quickstart_validates():
    from red_megatron.cli.launch import build_parser, plan

    section = README[README.index("## Quickstart on a real model"):README.index("## Data formats")]
    m = re.search(r"(red-launch --recipe qwen25_7b .*?--dry-run)", section, re.S)
    assert m, "no red-launch example in the quickstart"
    argv = shlex.split(re.sub(r"\\\n", " ", m.group(1)))[1:]
    spec, tasks, _, run_dir = plan(build_parser().parse_args(argv))
    assert spec.world_size == 16 and spec.host_path(str(run_dir)) == "/lustre/runs/red7b" and len(tasks) == 1


def test_tests_find_external_data_through_the_variable():
    offenders = []
    for f in sorted((REPO / "tests").glob("*.py")):
        text = f.read_text()
        if re.search(r"[\"']/work/shared", text):
            offenders.append(f.name)
    assert not offenders, f"hard-coded /work/shared paths (use tests.conftest.shared_data_dir / RED_SHARED_DATA): {offenders}"


def test_every_config_field_is_described():
    from red_megatron.cli.config_doc import undocumented_fields

    missing = undocumented_fields()
    assert not missing, (f"config fields without a description in docs/CONFIG.md: {missing}; add a `# ...` comment "
                         f"beside (or above) the field, or an entry in its class docstring")


def _readme_commands() -> list[list[str]]:
    from tests.test_readme_commands import readme_commands

    return [shlex.split(c) for c in readme_commands()]


def test_readme_data_paths_are_the_ones_prepare_data_writes(tmp_path, monkeypatch):
    """Every data file a quickstart command reads (its overrides, else its recipe's defaults as the job sees
    them) is the --out of a README prepare_data.py line; and prepare_data writes exactly its --out."""
    from red_megatron.cli.common import resolve_run_config

    monkeypatch.delenv("RED_DATA_ROOT", raising=False)
    cmds = _readme_commands()
    prepare = [c for c in cmds if "scripts/prepare_data.py" in c]
    written = {c[c.index("--out") + 1] for c in prepare}
    assert {"/data/openr1_math_46k_8192.parquet", "/data/math_eval.parquet"} <= written, written
    read = {}
    for c in cmds:
        if "--recipe" not in c or not c[c.index("--recipe") + 1].startswith("qwen"):
            continue
        overrides = [a for a in c if "=" in a and not a.startswith("-")]
        cfg = resolve_run_config(c[c.index("--recipe") + 1], None, overrides)
        read[cfg.data.path] = read[cfg.eval.data_path] = " ".join(c[:4])
    for c in cmds:
        read.update({a.partition("=")[2]: " ".join(c[:4]) for a in c if a.startswith("eval.data_path=")})
    assert len(read) >= 2 and all(p in written for p in read), \
        {p: cmd for p, cmd in read.items() if p not in written}
    # the local-file line runs: its output is where the line says (rebased under tmp_path)
    line = next(c for c in prepare if not c[c.index("--source") + 1].startswith(("$", "Elliott")))
    src = tmp_path / line[line.index("--source") + 1]
    src.parent.mkdir(parents=True)
    src.write_text(json.dumps({"question": "What is 2+3?", "answer": "5", "solution": "\\boxed{5}"}) + "\n")
    out = tmp_path / line[line.index("--out") + 1].lstrip("/")
    out.parent.mkdir(parents=True)
    sys.path.insert(0, str(REPO / "scripts"))
    from prepare_data import main as prepare_main

    assert prepare_main(["--source", str(src), "--out", str(out)]) == 0 and out.is_file()


def test_readme_and_docs_link_nothing_outside_the_repository():
    offenders = []
    for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = f.read_text()
        for m in re.finditer(r"\.\./shared|/work/", text):
            offenders.append(f"{f.name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}")
        for link in re.findall(r"\]\(([^)#\s]+)", text):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target = (f.parent / link).resolve()
            if not target.is_relative_to(REPO) or not target.exists():
                offenders.append(f"{f.name}: link {link}")
    assert not offenders, offenders


def test_the_container_image_the_docs_name_has_vllm_and_megatron_core():
    container = (REPO / "docs" / "CONTAINER.md").read_text()
    image = re.search(r"enroot import -o (\S+) dockerd://(\S+)", container)
    assert image, "docs/CONTAINER.md says how the built image becomes pyxis's file"
    named = [c[c.index("--container-image") + 1] for c in _readme_commands() if "--container-image" in c]
    named += re.findall(r"--container-image (\S+)", (REPO / "docs" / "LAUNCH.md").read_text())
    assert len(named) >= 3 and set(named) == {image.group(1)}, named
    dockerfile = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert f"-t {image.group(2)} ." in container
    assert re.search(r'pip install "vllm==[\d.]+"', dockerfile) and re.search(r'"megatron-core==[\d.]+"', dockerfile)
    assert "import megatron.core, vllm" in dockerfile  # the build fails on an image without them
