"""The mechanism's variants against AAT, paired: a post-hoc count over a study's kept score cells.

    .venv/bin/python scripts/mechanism_pairs.py docs/results-smollm2-cells [--config reproduce-smollm2] [--set instructions]
    .venv/bin/python scripts/mechanism_pairs.py docs/results-smollm2-cross-cells --twins   # the cross

The study's report gives each mechanism variant's figures and its gap closed, but no interval for
the difference between two of them (is AAT sampled without its plan as diverse as with it?). Here
each variant's per-prompt figures minus AAT's own-plan ones, on the same seeds and prompts, with
the study's own paired bootstrap (`anchorlm.study.aggregate.paired_difference`: seeds resampled,
then prompts, the same draws for both; the study config's bootstrap count and seed). With
`--twins`, each training's samples without a plan and with the SFT data's plans minus its own-plan
ones (`<t>_no_annotation`, `<t>_sft_plans` minus `<t>`, the same model, on the same seeds): the
mechanism's cross.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from topic_shares import variant_of  # scripts/: how a score cell names its variant

from anchorlm.study.aggregate import paired_difference
from anchorlm.study.config import load_study_config

METRICS = ("attribute_entropy", "embedding_distance", "vendi", "content_nll", "style_adherence")


def score_runs(folder: Path, pset: str) -> dict[str, dict[int, dict]]:
    """variant -> seed -> its score cell, for prompt set `pset` (the dose-response's other epochs
    are variants of their own: `aat (1 epoch)`)."""
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for score in sorted(folder.rglob("*.scores-*.json")):
        got = variant_of(score)
        if got is not None and got[2] == pset:
            out[got[0]][got[1]] = json.loads(score.read_text())
    return dict(out)


def pairs(runs: dict[str, dict[int, dict]], against: str, n_boot: int, seed: int) -> dict[str, dict]:
    """Every variant with the same seeds as `against`: {metric: {difference, ci95}} of it minus it."""
    ref = runs[against]
    out = {}
    for v, by_seed in sorted(runs.items()):
        if v == against or sorted(by_seed) != sorted(ref):
            continue
        a, b = [by_seed[s] for s in sorted(ref)], [ref[s] for s in sorted(ref)]
        out[v] = {
            m: paired_difference(a, b, m, n_boot, seed)
            for m in METRICS
            if all(m in r["per_prompt"] for r in a + b)
        }
    return out


MODES = ("_no_annotation", "_sft_plans")  # a training's other inference modes, as its variants name them


def twins(runs: dict[str, dict[int, dict]], n_boot: int, seed: int) -> tuple[dict[str, dict], list[str]]:
    """Each `<t>_no_annotation` and `<t>_sft_plans` minus `<t>` (the same model sampled without a
    plan, or with the SFT data's, against its own), where both have the same seeds: ({twin: {metric:
    {difference, ci95}}}, the twins left out and why)."""
    out, skipped = {}, []
    for v in sorted(runs):
        name, _, epochs = v.partition(" (")
        mode = next((m for m in MODES if name.endswith(m)), None)
        if mode is None:
            continue
        own = name.removesuffix(mode) + (f" ({epochs}" if epochs else "")
        if own not in runs:
            skipped.append(f"{v}: no {own} to compare with")
        elif sorted(runs[v]) != sorted(runs[own]):
            skipped.append(f"{v}: seeds {sorted(runs[v])}, {own} seeds {sorted(runs[own])}")
        else:
            out.update(pairs({v: runs[v], own: runs[own]}, own, n_boot, seed))
    return out, skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a study's kept cells (or its runs/ cell folder)")
    ap.add_argument("--config", default="reproduce-smollm2", help="the study config (bootstrap count, seed)")
    ap.add_argument("--set", default="instructions", help="the prompt set (as in the samples' file names)")
    ap.add_argument("--against", help="the variant the others are compared with (default: AAT's own plan)")
    ap.add_argument("--twins", action="store_true", help="each training's other inference modes minus its own plan")
    args = ap.parse_args()
    ev = load_study_config(args.config).base.evaluate
    runs = score_runs(args.folder, args.set)
    skipped: list[str] = []
    if args.twins:
        found, skipped = twins(runs, ev.bootstrap, ev.seed)
        print(f"Each training sampled without a plan or with the SFT data's, minus its own ({args.set}; "
              f"95% CIs over seeds, then prompts, {ev.bootstrap} resamples):\n")  # fmt: skip
    else:
        against = args.against or next(v for v in runs if v.split(" (")[0] == "aat" and "3 epochs" in v)
        found = pairs(runs, against, ev.bootstrap, ev.seed)
        print(f"Each variant minus {against} ({args.set}; seeds {sorted(runs[against])}; 95% CIs over seeds, "
              f"then prompts, {ev.bootstrap} resamples):\n")  # fmt: skip
    print("| variant | " + " | ".join(METRICS) + " |")
    print("|---|" + "---:|" * len(METRICS))
    for v, d in found.items():
        cells = [f"{d[m]['difference']:+.3f} [{d[m]['ci95'][0]:+.3f}, {d[m]['ci95'][1]:+.3f}]" if m in d else "–"
                 for m in METRICS]  # fmt: skip
        print(f"| {v} | " + " | ".join(cells) + " |")
    for why in skipped:
        print(f"left out: {why}")


if __name__ == "__main__":
    main()
