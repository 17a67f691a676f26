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
from anchorlm.io import lock_dir, write_json
from anchorlm.manifest import write_manifest

DOCS_PER_BATCH = 32


def _fingerprint(corpus: CorpusConfig, cfg: AnnotateConfig) -> str:
    ann = {k: v for k, v in to_dict(cfg).items() if k != "num_proc"}  # processes do not change tags
    blob = json.dumps({"corpus": to_dict(corpus), "annotate": ann}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_identity(path: Path) -> str:
    """A digest of a file's content (for a file over 64 MB: its size, first and last MB), so a
    resumed run can tell the corpus it started on from one changed in place."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= 64 << 20:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(str(size).encode() + fh.read(1 << 20))
            fh.seek(-(1 << 20), 2)
            h.update(fh.read())
    return h.hexdigest()[:16]


def corpus_identity(files: list[Path]) -> dict:
    """{file name: digest} of the corpus's files (a `datasets` dir: its data files)."""
    out = {}
    for f in files:
        parts = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        for p in parts:
            out[str(p.relative_to(f.parent))] = file_identity(p)
    return out


def check_resumable(state: dict, fp: str, identity: dict, out: Path) -> None:
    """Refuse to continue a run started with another config or on another corpus: its rows would
    be kept beside the new ones."""
    if state["fingerprint"] != fp:
        raise RuntimeError(
            f"{out} holds an annotation run with another config; use a new output dir or delete this one"
        )
    if state.get("corpus") not in (None, identity):
        changed = sorted(
            k for k in set(identity) | set(state["corpus"]) if identity.get(k) != state["corpus"].get(k)
        )
        raise RuntimeError(
            f"{out} holds an annotation run of another version of the corpus ({', '.join(changed[:5])} "
            "changed since it started); use a new output dir or delete this one"
        )


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

    files = list_shards(corpus.file)
    if files:  # a directory or glob of shards: shard by shard, streamed
        return annotate_shards(corpus, cfg, out_dir, files)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with lock_dir(out):
        return _annotate_file(corpus, cfg, out)


def _annotate_file(corpus: CorpusConfig, cfg: AnnotateConfig, out: Path) -> dict:
    stats = CorpusStats()
    docs = list(read_corpus(corpus, stats))
    if not docs:
        raise ValueError(f"{corpus.file}: no training documents ({_describe(stats)}); nothing to annotate")
    annotators = [get_annotator(name, cfg) for name in cfg.annotators]

    fp, identity = _fingerprint(corpus, cfg), corpus_identity([Path(corpus.file)])
    state_path, data_path = out / "state.json", out / "annotated.jsonl"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        check_resumable(state, fp, identity, out)
        for a in annotators:
            a.load_state(state["annotators"][a.name])
    else:
        data_path.unlink(missing_ok=True)
        states = {a.name: a.fit(docs, corpus.text_field) for a in annotators}
        state = {"fingerprint": fp, "corpus": identity, "annotators": states}
        write_json(state_path, state, indent=None)

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


def _describe(stats: CorpusStats) -> str:
    d = stats.as_dict()
    skipped = sum(d["skipped"].values())
    return (
        f"{d['read']} read, {d['heldout']} held out, {skipped} bad rows skipped, "
        f"{d['other_categories']} of other categories"
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
