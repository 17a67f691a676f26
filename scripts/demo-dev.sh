#!/usr/bin/env bash
# How the demo's recipe is chosen: its base, SFT and AAT models, sampled on the development prompts
# (never reported) and scored for well-formed annotations, plan topics, style, diversity and the gap
# closed. Two dev sets: `requests-dev` (12 short open requests of the kind the demo reports on:
# base is more diverse than SFT there, so the gap closed is defined) and `instructions-dev` (8
# varied instructions, the study's dev set; there base is less diverse than SFT).
#   scripts/demo-dev.sh runs/demo [--set section.field=value ...]   (after `anchorlm demo --out runs/demo`)
# Writes runs/demo/dev/<set>/{base,sft,aat}.jsonl and results.json; prints the tables.
set -euo pipefail
out=$1; shift
cfg=$out/config.json
bin=${ANCHORLM:-.venv/bin/anchorlm}
for set in requests-dev instructions-dev; do
  d=$out/dev/$set
  mkdir -p "$d"
  echo "== $set"
  "$bin" sample --config "$cfg" "$@" --model "$out/models/base" --prompts "$set" --out "$d/base.jsonl"
  "$bin" sample --config "$cfg" "$@" --model "$out/models/sft" --prompts "$set" --out "$d/sft.jsonl"
  "$bin" sample --config "$cfg" "$@" --model "$out/models/aat" --prompts "$set" --anchored --out "$d/aat.jsonl"
  "$bin" evaluate --config "$cfg" "$@" --samples base="$d/base.jsonl" sft="$d/sft.jsonl" aat="$d/aat.jsonl" \
    --prompts "$set" --out "$d/results.json"
done
