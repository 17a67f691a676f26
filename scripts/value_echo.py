"""How often an anchored response mostly repeats its own annotation's values: a post-hoc count over a
study's kept samples (the `tag_echo` rate counts `key:value` syntax written into the text, not a
response such as "Bofh-excuses!" under `topic:bofh-excuses`).

    .venv/bin/python scripts/value_echo.py docs/results-smollm2-samples --cells docs/results-smollm2-cells
        [--config reproduce-smollm2] [--set instructions]

A response echoes its values when half or more of its content words (the SFT style's opener and
closer left out, as the quality metrics leave them out) are words of its annotation's topic and
keyword values (`anchorlm.metrics.registry.echoes`, the `value_echo` rate's definition; since
2026-12-06 the study's report gives that rate, over every response); a response with no content
word is counted apart here (the `empty` rate counts it).
Only samples that wrote their own annotation count (forced-topic samples and those sampled with
the SFT data's plans, which were given theirs, are left out). Per model folder and training seed; plain samples have no annotation to echo.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

from anchorlm.data.style import strip_style
from anchorlm.metrics.registry import echoes
from anchorlm.study.config import load_study_config


def _manifest(model: Path, cells: Path | None) -> Path | None:
    """A kept model folder's manifest: beside it, or in the cells folder kept beside the samples."""
    where = model / "manifest.json"
    if not where.exists() and cells is not None:
        where = cells / model.parent.parent.name / model.parent.name / model.name / "manifest.json"
    return where if where.exists() else None


def epochs_of(model: Path, cells: Path | None) -> float | None:
    """The SFT epochs a kept model folder was post-trained for (None: no manifest, or none named)."""
    where = _manifest(model, cells)
    return json.loads(where.read_text()).get("config", {}).get("epochs") if where else None


def _name(model: Path, cells: Path | None) -> str:
    """The model's variant, with its SFT epochs where its manifest names them (the dose-response's
    models are the same variant trained longer); without a manifest the folder, whose digest keeps
    same-named models apart."""
    if _manifest(model, cells) is None:
        return model.name
    name, epochs = model.name.rsplit("-", 1)[0], epochs_of(model, cells)
    return name + f" ({epochs:g} epoch{'s' * (epochs != 1)})" if epochs else name


def counts(folder: Path, style, pset: str, cells: Path | None = None) -> dict[tuple[str, int], list[int]]:
    """(model, seed) -> [echoes, responses with content, responses without] over its anchored
    samples of prompt set `pset` that wrote their own annotation."""
    out: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    for m in sorted(folder.rglob("anchored-*.manifest.json")):
        if f"anchored-{pset}-" not in m.name:
            continue
        model = m.parent.parent
        seed = int(re.search(r"-s(\d+)$", model.parent.name).group(1))
        key = (_name(model, cells), seed)
        data = m.with_name(m.name.removesuffix(".manifest.json") + ".jsonl.gz")
        with gzip.open(data, "rt") as fh:
            for row in map(json.loads, fh):
                if row.get("annotation_prefix") or row.get("anchors", "iid") != "iid":
                    continue  # a forced topic or a plan drawn from the SFT data: given, not written
                e = echoes(strip_style(style, row["response"]), row.get("annotation") or [])
                c = out[key]
                if e is None:
                    c[2] += 1
                else:
                    c[0] += e
                    c[1] += 1
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "folder", type=Path, help="a study's kept samples (or its runs/ cell folder, gzipped samples)"
    )
    ap.add_argument("--config", default="reproduce-smollm2", help="the study config (for the SFT style)")
    ap.add_argument("--set", default="instructions", help="the prompt set (as in the samples' file names)")
    ap.add_argument(
        "--cells",
        type=Path,
        help="the kept cells (model manifests: SFT epochs), e.g. docs/results-smollm2-cells",
    )
    args = ap.parse_args()
    style = load_study_config(args.config).base.sft_data
    found = counts(args.folder, style, args.set, args.cells)
    print(
        f"Anchored responses that mostly repeat their annotation's values ({args.set}, own plans), per seed:\n"
    )
    print("| model | echo share (all seeds) | per seed (echoes / responses with content) | no content |")
    print("|---|---:|---|---:|")
    for model in sorted({k[0] for k in found}):
        seeds = sorted(s for m, s in found if m == model)
        e = sum(found[(model, s)][0] for s in seeds)
        n = sum(found[(model, s)][1] for s in seeds)
        empty = sum(found[(model, s)][2] for s in seeds)
        per = ", ".join(f"s{s} {found[(model, s)][0]}/{found[(model, s)][1]}" for s in seeds)
        print(f"| {model} | {e / max(n, 1):.3f} | {per} | {empty} |")


if __name__ == "__main__":
    main()
