"""The README's shell commands that can run on this machine run as written (issue 28, item 7): every
``--check``, ``--dry-run`` and ``--help`` line of its bash blocks, through a shell with the venv activated
as the README says, the checkpoints it names replaced by config.json-only stand-ins of the same shape."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import write_shaped_model

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
RUNNABLE = ("--check", "--dry-run", "--help")


def readme_commands() -> list[str]:
    """Each command of the README's shell blocks, continuation lines joined, comments dropped."""
    out, blocks, lang = [], [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if lang is not None:
                lang = None
                continue
            lang = line[3:].strip()
            if lang in ("", "bash"):
                blocks.append([])
        elif lang in ("", "bash"):
            blocks[-1].append(line)
    for block in ("\n".join(b) for b in blocks):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def test_the_readme_says_how_its_commands_find_the_venv():
    assert "source .venv/bin/activate" in README
    bare = [c for c in readme_commands() if c.split()[0] in ("red-train", "red-launch", "red-eval", "red-export")]
    assert bare, "the README shows the console scripts"


@pytest.mark.slow
def test_readme_commands_that_can_run_here_do(tmp_path, tiny_ckpt_dir):
    runnable = [c for c in readme_commands() if any(f in c.split() for f in RUNNABLE) and " ... " not in c]
    assert len(runnable) >= 4, runnable
    stand_ins = {m: write_shaped_model(tmp_path / "ckpt" / m, tiny_ckpt_dir, m)
                 for m in set(re.findall(r"model_dir=/ckpt/([\w.-]+)", " ".join(runnable)))}
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(REPO), "RED_DEBUG": "", "NEMORUN_HOME": str(tmp_path / "nemo")}
    env.pop("WORLD_SIZE", None)
    failed = []
    for cmd in runnable:
        for m, d in stand_ins.items():
            cmd = cmd.replace(f"model_dir=/ckpt/{m}", f"model_dir={d}")
        p = subprocess.run(["bash", "-c", f"source {venv_bin}/activate && {cmd}"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            failed.append(f"{cmd}\n  -> exit {p.returncode}: {p.stderr.strip()[-600:]}")
    assert not failed, "README commands that fail:\n" + "\n".join(failed)
