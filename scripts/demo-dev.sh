#!/usr/bin/env bash
# How the demo's recipe is chosen: its SFT and AAT models, sampled on the development prompts
# (`instructions-dev`, never reported), scored for well-formed annotations, style and diversity.
#   scripts/demo-dev.sh runs/demo [--set section.field=value ...]   (after `anchorlm demo --out runs/demo`)
# Writes runs/demo/dev/{sft,aat}.jsonl and runs/demo/dev/results.json; prints the table.
set -euo pipefail
out=$1; shift
cfg=$out/config.json
bin=${ANCHORLM:-.venv/bin/anchorlm}
mkdir -p "$out/dev"
"$bin" sample --config "$cfg" "$@" --model "$out/models/sft" --prompts instructions-dev --out "$out/dev/sft.jsonl"
"$bin" sample --config "$cfg" "$@" --model "$out/models/aat" --prompts instructions-dev --anchored --out "$out/dev/aat.jsonl"
"$bin" evaluate --config "$cfg" "$@" --samples sft="$out/dev/sft.jsonl" aat="$out/dev/aat.jsonl" \
  --prompts instructions-dev --out "$out/dev/results.json"
