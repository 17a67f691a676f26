"""Stage 1: annotate a corpus chunk by chunk, resumably.

Writes to ``out_dir``:
  annotated.jsonl  one line per training document: id, category, chunks [{text, tags}]
  state.json       fitted annotator state and the config fingerprint (written before any line)
  manifest.json    counts, skipped rows, annotator failures (written when the stage completes)

A killed run continues where it stopped: complete lines are kept, a torn last line is cut, and
the remaining documents are annotated in the same order with the same fitted state, so the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm.auto import tqdm

from anchorlm.annotators import annotate_all, get_annotator
from anchorlm.config import AnnotateConfig, CorpusConfig, to_dict
from anchorlm.data.corpus import CorpusStats, chunk_text, read_corpus
from anchorlm.manifest import write_manifest

DOCS_PER_BATCH = 32


def _fingerprint(corpus: CorpusConfig, cfg: AnnotateConfig) -> str:
    ann = {k: v for k, v in to_dict(cfg).items() if k != "num_proc"}  # processes do not change tags
    blob = json.dumps({"corpus": to_dict(corpus), "annotate": ann}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _completed_lines(path: Path) -> int:
    """Number of complete lines in `path`; a torn trailing line is truncated away."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return data[:keep].count(b"\n")


def annotate_batch(batch: list[dict], annotators, corpus: CorpusConfig, cfg: AnnotateConfig, fh) -> int:
    """Chunk and annotate `batch`, append one line per document to `fh`; returns the chunk count."""
    chunks = [chunk_text(d[corpus.text_field], cfg.max_chunk_chars) for d in batch]
    items = [(d, c) for d, cs in zip(batch, chunks) for c in cs]
    tags = iter(annotate_all(annotators, items))
    for d, cs in zip(batch, chunks):
        row = {
            "id": d["id"],
            "category": d.get(corpus.category_field),
            "chunks": [{"text": c, "tags": next(tags)} for c in cs],
        }
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    fh.flush()
    return len(items)


def annotate_corpus(corpus: CorpusConfig, cfg: AnnotateConfig, out_dir: str | Path) -> dict:
    """Annotate the training documents of `corpus`; returns the manifest."""
    from anchorlm.data.shards import annotate_shards, list_shards

    files = list_shards(corpus.path)
    if files:  # a directory or glob of shards: shard by shard, streamed
        return annotate_shards(corpus, cfg, out_dir, files)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats()
    docs = list(read_corpus(corpus, stats))
    annotators = [get_annotator(name, cfg) for name in cfg.annotators]

    fp = _fingerprint(corpus, cfg)
    state_path, data_path = out / "state.json", out / "annotated.jsonl"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state["fingerprint"] != fp:
            raise RuntimeError(
                f"{out} holds an annotation run with another config; use a new output dir or delete this one"
            )
        for a in annotators:
            a.load_state(state["annotators"][a.name])
    else:
        data_path.unlink(missing_ok=True)
        states = {a.name: a.fit(docs, corpus.text_field) for a in annotators}
        state = {"fingerprint": fp, "annotators": states}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(state_path)

    done = _completed_lines(data_path)
    n_chunks = 0
    with (
        open(data_path, "a", encoding="utf-8") as fh,
        tqdm(total=len(docs), initial=done, desc="annotate", unit="doc") as bar,
    ):
        for s in range(done, len(docs), DOCS_PER_BATCH):
            batch = docs[s : s + DOCS_PER_BATCH]
            n_chunks += annotate_batch(batch, annotators, corpus, cfg, fh)
            bar.update(len(batch))

    failures = {a.name: getattr(a, "failures", 0) for a in annotators}
    return write_manifest(
        out,
        "annotate",
        {"corpus": to_dict(corpus), "annotate": to_dict(cfg)},
        {
            "documents": len(docs),
            "resumed_at": done,
            "chunks_this_run": n_chunks,
            "corpus": stats.as_dict(),
            "annotator_failures": failures,
        },
    )


def iter_annotated(out_dir: str | Path):
    """Stream the annotated documents of `anchorlm annotate` (one file or its shards)."""
    from anchorlm.data.shards import iter_annotated_shards

    if not (Path(out_dir) / "manifest.json").exists():
        raise FileNotFoundError(f"{out_dir} has no finished annotation (run `anchorlm annotate` first)")
    if (Path(out_dir) / "shards").is_dir():
        yield from iter_annotated_shards(out_dir)
        return
    with open(Path(out_dir) / "annotated.jsonl", encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def read_annotated(out_dir: str | Path) -> list[dict]:
    """All annotated documents in memory (the demo's scale; `iter_annotated` streams)."""
    return list(iter_annotated(out_dir))
