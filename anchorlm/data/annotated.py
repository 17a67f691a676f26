"""Reading what `anchorlm annotate` wrote: one line per training document (id, category, chunks of
{text, tags}), in `annotated.jsonl` or one file per shard. The writer is anchorlm.annotate; every
later stage reads through here."""

from __future__ import annotations

import json
from pathlib import Path


def annotated_files(out_dir: str | Path) -> list[Path]:
    """The JSONL files of a finished annotation: annotated.jsonl, or one per shard."""
    d = Path(out_dir)
    if not (d / "manifest.json").exists():
        raise FileNotFoundError(f"{out_dir} has no finished annotation (run `anchorlm annotate` first)")
    return sorted((d / "shards").glob("*.jsonl")) if (d / "shards").is_dir() else [d / "annotated.jsonl"]


def iter_annotated(out_dir: str | Path):
    """Stream the annotated documents of `anchorlm annotate` (one file or its shards)."""
    for f in annotated_files(out_dir):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


def read_annotated(out_dir: str | Path) -> list[dict]:
    """All annotated documents in memory (the demo's scale; `iter_annotated` streams)."""
    return list(iter_annotated(out_dir))
