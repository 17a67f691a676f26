"""Stage 1: annotate a corpus chunk by chunk, resumably: one file, or a corpus of shards.

Writes to ``out_dir``:
  annotated.jsonl  one line per training document: id, category, chunks [{text, tags}]
  shards/          for a sharded corpus instead: <shard>.jsonl per shard, <shard>.done when whole
  state.json       fitted annotator state, the config fingerprint and the corpus files' digests
                   (written before any line)
  manifest.json    counts, skipped rows, annotator failures (written when the stage completes)

A killed run continues where it stopped: complete lines are kept, a torn last line is cut, and
the remaining documents are annotated in the same order with the same fitted state, so the
result equals an uninterrupted run's. A run started with another config, or on a corpus changed
since, refuses to continue. Shards are annotated in `num_proc` processes, each streamed row by row
(peak memory follows the shard, not the corpus); the annotators' state is fitted once, on the
first `annotate.fit_max_docs` documents.
"""

from __future__ import annotations

import hashlib
import json
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from anchorlm.annotators import STATE, annotate_all, fit_state, get_annotator, load_annotators
from anchorlm.config import AnnotateConfig, CorpusConfig, to_dict
from anchorlm.data.corpus import CorpusStats, chunk_text, iter_valid, read_corpus
from anchorlm.data.shards import list_shards, map_shards, shard_name
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
    """Annotate the training documents of `corpus` (one file, or a directory or glob of shards);
    returns the manifest."""
    files = list_shards(corpus.file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with lock_dir(out):
        return _annotate_shards(corpus, cfg, out, files) if files else _annotate_file(corpus, cfg, out)


def _annotate_file(corpus: CorpusConfig, cfg: AnnotateConfig, out: Path) -> dict:
    stats = CorpusStats()
    docs = list(read_corpus(corpus, stats))
    if not docs:
        raise ValueError(f"{corpus.file}: no training documents ({_describe(stats)}); nothing to annotate")
    annotators = [get_annotator(name, cfg) for name in cfg.annotators]

    fp, identity = _fingerprint(corpus, cfg), corpus_identity([Path(corpus.file)])
    state_path, data_path = out / STATE, out / "annotated.jsonl"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        check_resumable(state, fp, identity, out)
        for a in annotators:
            a.load_state(state["annotators"][a.name])
    else:
        data_path.unlink(missing_ok=True)
        state = fit_state(cfg, docs, corpus.text_field, fingerprint=fp, corpus=identity)
        write_json(state_path, state, indent=None)
        for a in annotators:
            a.load_state(state["annotators"][a.name])

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
        {
            "corpus": to_dict(corpus),
            "corpus_file": str(Path(corpus.file).resolve()),
            "annotate": to_dict(cfg),
        },
        {
            "documents": len(docs),
            "resumed_at": done,
            "chunks_this_run": n_chunks,
            "corpus": stats.as_dict(),
            "annotator_failures": failures,
        },
    )


def _annotate_shards(corpus: CorpusConfig, cfg: AnnotateConfig, out: Path, files: list[Path]) -> dict:
    if corpus.max_chars_per_category:
        raise ValueError(
            "corpus.max_chars_per_category needs the whole corpus in memory; set it to 0 for shards"
        )
    (out / "shards").mkdir(exist_ok=True)
    fp, identity = _fingerprint(corpus, cfg), corpus_identity(files)
    state_path = out / STATE
    if state_path.exists():
        check_resumable(json.loads(state_path.read_text()), fp, identity, out)
    else:
        sample = list(
            islice((d for f in files for d in iter_valid(f, corpus, CorpusStats())), cfg.fit_max_docs)
        )
        if not sample:
            raise ValueError(
                f"{corpus.file}: no training documents in {len(files)} shards; nothing to annotate"
            )
        write_json(
            state_path,
            fit_state(cfg, sample, corpus.text_field, fingerprint=fp, corpus=identity),
            indent=None,
        )
        del sample
    jobs = [(str(f), to_dict(corpus), to_dict(cfg), str(out)) for f in files]
    counts = map_shards(_annotate_shard, jobs, cfg.num_proc, "annotate")
    total = {k: sum(c.get(k, 0) for c in counts) for k in ("documents", "chunks", "read", "heldout")}
    skipped: dict = {}
    for c in counts:
        for why, k in c.get("skipped", {}).items():
            skipped[why] = skipped.get(why, 0) + k
    if not total["documents"]:
        raise ValueError(f"{corpus.file}: no training documents in {len(files)} shards; nothing to annotate")
    return write_manifest(
        out,
        "annotate",
        {
            "corpus": to_dict(corpus),
            "corpus_file": str(Path(corpus.file).resolve()),
            "annotate": to_dict(cfg),
        },
        {
            **total,
            "skipped": skipped,
            "shards": len(files),
            "resumed_shards": sum(c["resumed"] for c in counts),
        },
    )


def _annotate_shard(job) -> dict:
    """Annotate one shard in this process; a finished shard returns its recorded counts."""
    path, corpus_d, cfg_d, out = Path(job[0]), job[1], job[2], Path(job[3])
    name = shard_name(path)
    done = out / "shards" / f"{name}.done"
    if done.exists():
        return {**json.loads(done.read_text()), "resumed": True}
    corpus, cfg = CorpusConfig(**corpus_d), AnnotateConfig(**cfg_d)
    annotators = load_annotators(cfg, out)
    data = out / "shards" / f"{name}.jsonl"
    skip = _completed_lines(data)
    stats = CorpusStats()
    docs = islice(iter_valid(path, corpus, stats), skip, None)
    n_docs, n_chunks = skip, 0
    with open(data, "a", encoding="utf-8") as fh:
        while batch := list(islice(docs, DOCS_PER_BATCH)):
            n_chunks += annotate_batch(batch, annotators, corpus, cfg, fh)
            n_docs += len(batch)
    counts = {
        "documents": n_docs,
        "chunks": n_chunks,
        "read": stats.read,  # iter_valid counted the documents skipped on resume too
        "heldout": stats.heldout,
        "skipped": dict(stats.skipped),
    }
    done.write_text(json.dumps(counts))
    return {**counts, "resumed": bool(skip)}


def _describe(stats: CorpusStats) -> str:
    d = stats.as_dict()
    skipped = sum(d["skipped"].values())
    return (
        f"{d['read']} read, {d['heldout']} held out, {skipped} bad rows skipped, "
        f"{d['other_categories']} of other categories"
    )
