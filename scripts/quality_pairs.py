"""AAT's quality rates minus SFT's with intervals: a post-hoc count over a study's kept samples.

    .venv/bin/python scripts/quality_pairs.py docs/results-smollm2-samples --cells docs/results-smollm2-cells
        [--config reproduce-smollm2] [--set instructions] [--epochs 3]

The study's report gives style adherence and the degenerate rates (empty responses, repeated
4-grams, tag echo) as means only, and "matched" asks each within 2 points of SFT's. Here each rate
per prompt and seed, from the kept samples with the metrics' own definitions
(`anchorlm.metrics.registry`), and AAT (its own plans) minus SFT with the study's paired bootstrap
(seeds resampled, then prompts, the same draws for both: `anchorlm.study.aggregate`), beside the
value echo of `value_echo.py` (half or more of a response's content words from its annotation's
topic and keyword values; SFT, without an annotation, 0).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from value_echo import echoes, epochs_of  # scripts/

from anchorlm.data.style import follows_style, strip_style
from anchorlm.metrics.registry import TAG, repeats
from anchorlm.study.aggregate import hierarchical
from anchorlm.study.config import load_study_config

RATES = ("style_adherence", "empty_responses", "repetition", "tag_echo", "value_echo")


def rates(row: dict, style) -> dict[str, float]:
    """One response's 0/1 figures, as the quality metrics count them."""
    content = strip_style(style, row["response"])
    return {
        "style_adherence": float(follows_style(style, row["response"])),
        "empty_responses": float(not content.strip()),
        "repetition": float(repeats(content)),
        "tag_echo": float(bool(TAG.search(content))),
        "value_echo": float(bool(echoes(content, row.get("annotation") or []))),
    }


def per_prompt(folder: Path, cells: Path, style, pset: str, epochs: float) -> dict[str, dict[int, dict]]:
    """{'sft' | 'aat': {seed: {rate: [mean per prompt, in prompt order]}}} from the kept samples of
    the models post-trained for `epochs` (their manifests in `cells`): SFT's plain samples, AAT's
    own-plan ones (forced topics and the SFT data's plans left out)."""
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for m in sorted(folder.rglob(f"*-{pset}-*.manifest.json")):
        model = m.parent.parent
        variant = model.name.rsplit("-", 1)[0]
        kind = m.name.split("-", 1)[0]
        if (variant, kind) not in (("sft", "plain"), ("aat", "anchored")):
            continue
        if epochs_of(model, cells) != epochs:
            continue
        by_prompt: dict[str, list[dict]] = defaultdict(list)
        with gzip.open(m.with_name(m.name.removesuffix(".manifest.json") + ".jsonl.gz"), "rt") as fh:
            for row in map(json.loads, fh):
                if row.get("annotation_prefix") or row.get("anchors", "iid") != "iid":
                    continue
                by_prompt[row["prompt_id"]].append(rates(row, style))
        if not by_prompt:
            continue  # a file of forced plans only
        seed = int(re.search(r"-s(\d+)$", model.parent.name).group(1))
        order = sorted(by_prompt)
        out[variant][seed] = {r: [float(np.mean([x[r] for x in by_prompt[p]])) for p in order] for r in RATES}
        out[variant][seed]["prompts"] = order
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a study's kept samples")
    ap.add_argument("--cells", type=Path, required=True, help="the kept cells (the models' manifests)")
    ap.add_argument("--config", default="reproduce-smollm2", help="the study config (SFT style, bootstrap)")
    ap.add_argument("--set", default="instructions", help="the prompt set (as in the samples' file names)")
    ap.add_argument("--epochs", type=float, default=3, help="the post-training epochs of the models compared")
    args = ap.parse_args()
    cfg = load_study_config(args.config).base
    got = per_prompt(args.folder, args.cells, cfg.sft_data, args.set, args.epochs)
    seeds = sorted(set(got["sft"]) & set(got["aat"]))
    assert all(got["sft"][s]["prompts"] == got["aat"][s]["prompts"] for s in seeds), "unpaired prompts"
    ev = cfg.evaluate
    print(f"AAT (own plans) minus SFT ({args.set}, seeds {seeds}; 95% CIs over seeds, then prompts, "
          f"{ev.bootstrap} resamples):\n")  # fmt: skip
    print("| rate | SFT | AAT | AAT - SFT | per seed (AAT - SFT) |")
    print("|---|---:|---:|---:|---|")
    for r in RATES:
        a = np.array([got["aat"][s][r] for s in seeds])
        b = np.array([got["sft"][s][r] for s in seeds])
        lo, hi = hierarchical(a - b, ev.bootstrap, ev.seed)
        per = ", ".join(f"{x:+.3f}" for x in (a - b).mean(1))
        print(
            f"| {r} | {b.mean():.3f} | {a.mean():.3f} | {(a - b).mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | {per} |"
        )


if __name__ == "__main__":
    main()
