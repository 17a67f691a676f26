"""How many self-written annotations were cut by the annotation cap rather than written wrong.

    .venv/bin/python scripts/annotation_cuts.py docs/results-smollm2-samples [--annotated runs/x/annotate]

Reads every anchored samples file (`*.jsonl` or `*.jsonl.gz`) under the folder with the manifest
beside it, and prints per file: samples, the share of well-formed annotations, the share that reached
`sample.max_annotation_tokens` without their close (cut: not well-formed, whatever the model was
writing), and the share well-formed among those not cut. Samples written since `annotation_cut` is a
field carry it; older ones are judged by `annotation_tokens >= max_annotation_tokens`. With
`--annotated` (a corpus's annotate/ folder) and `--model` (whose tokenizer), it also prints how long
the training annotations are in that tokenizer's tokens, by topic: a cap below the longest one cuts
that topic's annotations.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def cuts(folder: Path) -> list[dict]:
    out = []
    for path in sorted([*folder.rglob("*.jsonl"), *folder.rglob("*.jsonl.gz")]):
        manifest = path.with_name(path.name.removesuffix(".gz").removesuffix(".jsonl") + ".manifest.json")
        rows = read_rows(path)
        if not rows or "annotation_ok" not in rows[0] or not manifest.exists():
            continue
        cap = json.loads(manifest.read_text())["config"]["max_annotation_tokens"]
        cut = [r.get("annotation_cut", not r["annotation_ok"] and r["annotation_tokens"] >= cap) for r in rows]
        kept = [r["annotation_ok"] for r, c in zip(rows, cut) if not c]
        out.append({
            "file": str(path.relative_to(folder)),
            "samples": len(rows),
            "cap": cap,
            "well_formed": sum(r["annotation_ok"] for r in rows) / len(rows),
            "cut": sum(cut) / len(rows),
            "well_formed_if_not_cut": sum(kept) / len(kept) if kept else float("nan"),
        })  # fmt: skip
    return out


def training_lengths(annotated: Path, model: str) -> dict[str, list[int]]:
    """Tokens of each training annotation (between its delimiters), by topic."""
    from anchorlm.data.annotated import iter_annotated
    from anchorlm.format import encode_annotation
    from anchorlm.models import load_tokenizer

    tok = load_tokenizer(model)
    by_topic = defaultdict(list)
    for doc in iter_annotated(annotated):
        for c in doc["chunks"]:
            by_topic[doc.get("category", "?")].append(len(encode_annotation(tok, c["tags"])[0]) - 2)
    return dict(by_topic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--annotated", type=Path, help="an annotate/ folder: the training annotations' lengths")
    ap.add_argument("--model", default="smollm2", help="whose tokenizer counts them (default smollm2)")
    args = ap.parse_args()
    print("| samples file | n | cap | well-formed | cut at the cap | well-formed if not cut |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in cuts(args.folder):
        print(f"| {r['file']} | {r['samples']} | {r['cap']} | {r['well_formed']:.3f} | {r['cut']:.3f} | "
              f"{r['well_formed_if_not_cut']:.3f} |")  # fmt: skip
    if args.annotated:
        lengths = training_lengths(args.annotated, args.model)
        print("\n| topic | training annotations | longest (tokens) | median |")
        print("|---|---:|---:|---:|")
        for topic, ls in sorted(lengths.items(), key=lambda kv: -max(kv[1])):
            print(f"| {topic} | {len(ls)} | {max(ls)} | {sorted(ls)[len(ls) // 2]} |")


if __name__ == "__main__":
    main()
