#!/usr/bin/env bash
# The GPU study (anchorlm/configs/reproduce-gpu.yaml) in one device call of at most 9 minutes, scored here.
#
#   scripts/gpu-study.sh prepare            here: data stages into runs/reproduce-gpu (needs .venv)
#   device tool, one call (timeout_s 560), carry ["runs/reproduce-gpu"]:
#       scripts/gpu-study.sh run            there: plan, train, sample for MINUTES (default 7.5);
#                                           $OUT gets plan.json and cells.tar.gz (2 files)
#   scripts/gpu-study.sh evaluate DIR       here: DIR holds what came back; scores the cells and
#                                           writes docs/gpu/results.md (labelled with the device)
#   scripts/gpu-study.sh dry-run [RECIPE]   all three on this CPU with a tiny recipe (the tests run it)
#
# The GPU machine has torch, transformers, accelerate and peft but not `datasets` or the packaged
# models: the blocks travel as blocks.npy inside the carried cell directory; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?usage: scripts/gpu-study.sh prepare|run|evaluate DIR|dry-run [RECIPE]}
RECIPE=${RECIPE:-reproduce-gpu}
PY=${PYTHON:-.venv/bin/python}
case "$STEP" in
  prepare)
    "$PY" -m anchorlm.study.remote prepare --config "$RECIPE" ;;
  run)
    PY=${PYTHON:-python3}  # the GPU machine's own Python; anchorlm runs from this tree
    PYTHONPATH=$PWD "$PY" -m anchorlm.study.remote run --config "$RECIPE" --minutes "${MINUTES:-7.5}" \
      --pack "${OUT:?run sets OUT (the device tool does)}" 2>&1 | tee "$OUT/run.log" ;;
  evaluate)
    DIR=${2:?evaluate needs the folder that came back}
    "$PY" -m anchorlm.study.remote evaluate --config "$RECIPE" --archive "$DIR/cells.tar.gz" ;;
  dry-run)
    RECIPE=${2:-tests/assets/gpu-dry-run.yaml}
    WORK=${WORK:-$(mktemp -d)}
    "$PY" -m anchorlm.study.remote prepare --config "$RECIPE" --set "out_dir=$WORK/here" --set "docs_dir=$WORK/docs"
    cp -r "$WORK/here" "$WORK/there"  # what the device call carries: the prepared data only
    rm -rf "$WORK/there/tokens"/*/data-*.arrow  # the GPU machine has no `datasets`: blocks.npy must do
    mkdir -p "$WORK/out"
    "$PY" -m anchorlm.study.remote run --config "$RECIPE" --set "out_dir=$WORK/there" --set "docs_dir=$WORK/docs" \
      --minutes "${MINUTES:-2}" --pack "$WORK/out"
    # scoring sees only what came back: the prepared data here and the archive
    "$PY" -m anchorlm.study.remote evaluate --config "$RECIPE" --set "out_dir=$WORK/here" --set "docs_dir=$WORK/docs" \
      --archive "$WORK/out/cells.tar.gz"
    echo "dry run: $WORK/docs" ;;
  *) echo "unknown step $STEP" >&2; exit 2 ;;
esac
