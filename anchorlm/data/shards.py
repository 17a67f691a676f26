"""Corpora larger than memory: a directory (or glob) of Parquet / JSONL(.gz) shards.

Annotation and tokenisation run shard by shard, in `num_proc` processes, each shard streamed row by
row (Parquet record batch by record batch), so peak memory follows the shard and batch sizes, not
the corpus size. Each shard's output is complete when its `.done` marker exists; a killed run
redoes only unfinished shards, and a half-written annotation shard continues from its last line.

    annotate/shards/<shard>.jsonl + <shard>.done     one line per document, as annotated.jsonl
    tokens/shards/<shard>/ + <shard>.done            a `datasets` dataset of blocks per shard

The annotators' corpus-level state (the keyword annotator's IDF table) is fitted once, on the
first `annotate.fit_max_docs` documents, and shared by every shard.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from multiprocessing import get_context
from pathlib import Path

from anchorlm.io import write_json

SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")


def list_shards(path: str | Path) -> list[Path] | None:
    """The shard files of a sharded corpus (sorted), or None when `path` is a single file or a
    `datasets` directory."""
    s = str(path)
    if any(c in s for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(s) if p.endswith(SUFFIXES))
        if not files:
            raise FileNotFoundError(f"corpus.path {s!r} matches no .parquet/.jsonl(.gz) files")
        return _distinct(files)
    p = Path(path)
    if not p.is_dir() or (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
        return None
    files = sorted(f for f in p.iterdir() if f.name.endswith(SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{p} holds no .parquet/.jsonl(.gz) shards and is not a `datasets` directory")
    return _distinct(files)


def _distinct(files: list[Path]) -> list[Path]:
    """Shards write their output under their name without suffix: two files with one name (x.jsonl
    and x.jsonl.gz, or x.jsonl in two directories) would write into one output."""
    by_name: dict = {}
    for f in files:
        by_name.setdefault(shard_name(f), []).append(f)
    clash = [v for v in by_name.values() if len(v) > 1]
    if clash:
        raise ValueError(
            f"shards {', '.join(map(str, clash[0]))} have one name ({shard_name(clash[0][0])!r}); "
            "rename or remove one, each shard needs its own name"
        )
    return files


def shard_name(path: Path) -> str:
    name = path.name
    for suf in SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def _map(fn, jobs: list, num_proc: int, desc: str) -> list:
    """`fn` over the shard jobs, in `num_proc` processes, with a progress bar counting shards."""
    from tqdm.auto import tqdm

    bar = dict(total=len(jobs), desc=desc, unit="shard")
    if num_proc <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, **bar)]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with ProcessPoolExecutor(min(num_proc, len(jobs)), mp_context=get_context("spawn")) as pool:
        return list(tqdm(pool.map(fn, jobs), **bar))


# --- annotation ------------------------------------------------------------------------------


def annotate_shards(corpus, cfg, out_dir: str | Path, files: list[Path]) -> dict:
    """Annotate every shard (resumably, `cfg.num_proc` at a time); returns the manifest."""
    from anchorlm.io import lock_dir

    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    with lock_dir(out):
        return _annotate_shards(corpus, cfg, out, files)


def _annotate_shards(corpus, cfg, out: Path, files: list[Path]) -> dict:
    from anchorlm.annotate import _fingerprint, check_resumable, corpus_identity
    from anchorlm.annotators import get_annotator
    from anchorlm.config import to_dict
    from anchorlm.data.corpus import CorpusStats, iter_valid
    from anchorlm.manifest import write_manifest

    if corpus.max_chars_per_category:
        raise ValueError(
            "corpus.max_chars_per_category needs the whole corpus in memory; set it to 0 for shards"
        )
    fp, identity = _fingerprint(corpus, cfg), corpus_identity(files)
    state_path = out / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        check_resumable(state, fp, identity, out)
    else:
        sample = list(
            islice((d for f in files for d in iter_valid(f, corpus, CorpusStats())), cfg.fit_max_docs)
        )
        annotators = [get_annotator(name, cfg) for name in cfg.annotators]
        if not sample:
            raise ValueError(f"{corpus.file}: no training documents in {len(files)} shards; nothing to annotate")
        state = {
            "fingerprint": fp,
            "corpus": identity,
            "annotators": {a.name: a.fit(sample, corpus.text_field) for a in annotators},
        }
        del sample
        write_json(state_path, state, indent=None)
    jobs = [(str(f), to_dict(corpus), to_dict(cfg), str(out)) for f in files]
    counts = _map(_annotate_one, jobs, cfg.num_proc, "annotate")
    total = {k: sum(c.get(k, 0) for c in counts) for k in ("documents", "chunks", "read", "heldout")}
    skipped: dict = {}
    for c in counts:
        for why, k in c.get("skipped", {}).items():
            skipped[why] = skipped.get(why, 0) + k
    total["skipped"] = skipped
    return write_manifest(
        out,
        "annotate",
        {"corpus": to_dict(corpus), "annotate": to_dict(cfg)},
        {**total, "shards": len(files), "resumed_shards": sum(c["resumed"] for c in counts)},
    )


def _annotate_one(job) -> dict:
    """Annotate one shard in this process; a finished shard returns its recorded counts."""
    from anchorlm.annotate import DOCS_PER_BATCH, _completed_lines, annotate_batch
    from anchorlm.annotators import get_annotator
    from anchorlm.config import AnnotateConfig, CorpusConfig
    from anchorlm.data.corpus import CorpusStats, iter_valid

    path, corpus_d, cfg_d, out = Path(job[0]), job[1], job[2], Path(job[3])
    name = shard_name(path)
    done = out / "shards" / f"{name}.done"
    if done.exists():
        return {**json.loads(done.read_text()), "resumed": True}
    corpus, cfg = CorpusConfig(**corpus_d), AnnotateConfig(**cfg_d)
    state = json.loads((out / "state.json").read_text())
    annotators = [get_annotator(n, cfg) for n in cfg.annotators]
    for a in annotators:
        a.load_state(state["annotators"][a.name])
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
        "read": stats.read + skip,
        "heldout": stats.heldout,
        "skipped": dict(stats.skipped),
    }
    done.write_text(json.dumps(counts))
    return {**counts, "resumed": bool(skip)}


def iter_annotated_shards(out_dir: str | Path) -> Iterator[dict]:
    for f in sorted((Path(out_dir) / "shards").glob("*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


# --- tokenisation ----------------------------------------------------------------------------


def pack_shards(
    annotated_dir,
    tokenizer_path: str,
    annotated: bool,
    seq_len: int,
    out_dir,
    seed: int,
    num_proc: int,
    annotation_dropout: float = 0.0,
):
    """Pack each annotated shard into its own blocks dataset (resumably); returns the manifest."""
    from anchorlm.manifest import write_manifest

    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    files = sorted((Path(annotated_dir) / "shards").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{annotated_dir} has no annotated shards (run `anchorlm annotate` first)")
    jobs = [(str(f), tokenizer_path, annotated, seq_len, str(out), seed, annotation_dropout) for f in files]
    counts = _map(_pack_one, jobs, num_proc, f"tokenize ({'annotated' if annotated else 'plain'})")
    total = {k: sum(c[k] for c in counts) for k in ("documents", "tokens", "blocks", "annotation_tokens")}
    return write_manifest(
        out,
        "tokenize",
        {"annotated": annotated, "seq_len": seq_len, "seed": seed, "annotation_dropout": annotation_dropout},
        {**total, "shards": len(files)},
    )


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    """One tokenizer per process: loading it for every shard kept ~3.5 MB a shard alive."""
    from anchorlm.tokenizer import load_tokenizer

    return load_tokenizer(path)


def _pack_one(job) -> dict:
    from anchorlm.data.pack import pack

    path, tok_path, annotated, seq_len, out, seed, dropout = job
    name = shard_name(Path(path))
    done = Path(out) / "shards" / f"{name}.done"
    if done.exists():
        return json.loads(done.read_text())

    def docs():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)

    m = pack(docs(), _tokenizer(tok_path), annotated, seq_len, Path(out) / "shards" / name, seed, dropout)
    done.write_text(json.dumps(m["counts"]))
    return m["counts"]


class Blocks:
    """Packed blocks from `blocks.npy`, memory-mapped: rows {"input_ids": [...]} as a `datasets`
    dataset gives them, without needing `datasets` (a bare GPU machine may lack it)."""

    def __init__(self, path: Path):
        import numpy as np

        self.array = np.load(path, mmap_mode="r")

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.array[i].tolist()}


def load_blocks(data_dir: str | Path):
    """The training blocks of `anchorlm tokenize`: one file's (`blocks.npy`, or its `datasets`
    copy), or every shard's, concatenated (memory-mapped: nothing is loaded into memory)."""
    d = Path(data_dir)
    if (d / "blocks.npy").exists():
        return Blocks(d / "blocks.npy")
    from datasets import concatenate_datasets, load_from_disk

    if (d / "shards").is_dir():
        parts = [load_from_disk(str(p)) for p in sorted((d / "shards").iterdir()) if p.is_dir()]
        if not parts:
            raise FileNotFoundError(f"{d}/shards holds no tokenised shards")
        return concatenate_datasets(parts)
    return load_from_disk(str(d))
