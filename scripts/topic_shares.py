"""Where a study's samples land: the share of each variant's samples the attribute classifier puts in
the SFT data's topics, per training seed, from the study's score cells.

    .venv/bin/python scripts/topic_shares.py docs/results-smollm2-cells [--topics food,love] [--set instructions]

The within-prompt figures (embedding distance, Vendi, attribute entropy) measure how different one
prompt's samples are from each other; a writer that answers every prompt with the SFT data's topics
can still vary its wording within a prompt. This counts that pull across prompts: how many samples
land in the SFT topics at all. Variants are told apart by their model's folder and the samples'
manifest (plain, anchored with its own plan, or with plans given); a cell folder kept by
`scripts/study_cells.py save` or a study's `runs/` folder both work.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np


def variant_of(score: Path) -> tuple[str, int, str] | None:
    """(variant, seed, prompt set) of a score file, from its model folder and samples manifest."""
    m = re.fullmatch(r"(anchored|plain)-(.+)-[0-9a-f]{8}\.scores-[0-9a-f]{8}\.json", score.name)
    model = score.parent.parent
    seed = re.search(r"-s(\d+)$", model.parent.name)
    if not m or not seed:
        return None
    kind, pset = m.group(1), m.group(2)
    manifest = score.parent / (score.name.split(".scores-")[0] + ".manifest.json")
    cfg = json.loads(manifest.read_text())["config"] if manifest.exists() else {}
    name = model.name.rsplit("-", 1)[0]
    if kind == "plain" and name.startswith("aat"):
        name += "_no_annotation"  # an anchored model sampled without its plan
    elif kind == "anchored" and cfg.get("anchors") == "given":
        name += "_sft_plans"
    elif kind == "anchored" and name == "aat" and cfg.get("anchors") not in (None, "iid"):
        name += f"_{cfg['anchors']}"
    name = {"plain": "base"}.get(name, name)
    trained = model / "manifest.json"  # a model post-trained for other epochs (the dose-response)
    epochs = json.loads(trained.read_text())["config"].get("epochs") if trained.exists() else None
    return name + (f" ({epochs:g} epoch{'s' * (epochs != 1)})" if epochs else ""), int(seed.group(1)), pset


def shares(folder: Path, topics: set[str], pset: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for score in sorted(folder.rglob("*.scores-*.json")):
        got = variant_of(score)
        if got is None or got[2] != pset:
            continue
        counts = json.loads(score.read_text()).get("label_counts") or {}
        n = sum(counts.values())
        if n:
            out[got[0]][got[1]] = sum(counts.get(t, 0) for t in topics) / n
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--topics", default="food,love", help="the SFT data's topics (comma-separated)")
    ap.add_argument("--set", default="instructions", help="the prompt set (as in the samples' file names)")
    args = ap.parse_args()
    topics = set(args.topics.split(","))
    found = shares(args.folder, topics, args.set)
    print(f"Share of samples classified in {sorted(topics)} ({args.set}), per training seed:\n")
    print("| variant | mean | per seed |")
    print("|---|---:|---|")
    for v, by_seed in sorted(found.items(), key=lambda kv: -np.mean(list(kv[1].values()))):
        vals = [by_seed[s] for s in sorted(by_seed)]
        print(f"| {v} | {np.mean(vals):.3f} | {', '.join(f's{s} {by_seed[s]:.3f}' for s in sorted(by_seed))} |")


if __name__ == "__main__":
    main()
