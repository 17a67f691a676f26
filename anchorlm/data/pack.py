"""Stage 3: tokenize annotated documents into fixed-length blocks for pretraining, and read them.

`plain` drops the annotations; `annotated` interleaves them (`<z1> x1 <z2> x2 ...`). Documents are
shuffled with the seed, joined with EOS and cut into `seq_len` blocks, saved as a `datasets` dataset
and as `blocks.npy` (read without `datasets`). A sharded annotation is packed shard by shard, in
processes, resumably; `tokenize_corpus` chooses, and `load_blocks` reads either.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from anchorlm.data.annotated import iter_annotated
from anchorlm.data.shards import map_shards, shard_name
from anchorlm.format import encode_document
from anchorlm.manifest import write_manifest
from anchorlm.models import load_tokenizer


def tokenize_corpus(annotated_dir, tokenizer: str, annotated: bool, seq_len: int, out_dir, seed: int = 0,
                    annotation_dropout: float = 0.0, num_proc: int = 1) -> dict:  # fmt: skip
    """Pack the documents `anchorlm annotate` wrote into `out_dir`, shard by shard when the
    annotation was sharded; `tokenizer` is a tokenizer dir or any model spec. Returns the manifest."""
    if (Path(annotated_dir) / "shards").is_dir():
        return pack_shards(annotated_dir, str(tokenizer), annotated, seq_len, out_dir, seed, num_proc,
                           annotation_dropout)  # fmt: skip
    tok = load_tokenizer(tokenizer)
    return pack(iter_annotated(annotated_dir), tok, annotated, seq_len, out_dir, seed, annotation_dropout)


def pack(
    docs: list[dict],
    tokenizer,
    annotated: bool,
    seq_len: int,
    out_dir: str | Path,
    seed: int = 0,
    annotation_dropout: float = 0.0,
):
    """Pack `docs` into `seq_len` blocks in `out_dir`; with `annotation_dropout` p (annotated only),
    each chunk loses its annotation with probability p (seeded), so the model also sees text
    without a plan."""
    from datasets import Dataset

    docs = list(docs)  # one file's or one shard's documents
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    drop = random.Random(seed + 1)
    stream: list[int] = []
    n_ann = n_dropped = 0
    for i in tqdm(order, desc=f"tokenize ({'annotated' if annotated else 'plain'})", unit="doc"):
        chunks = [(c["tags"], c["text"]) for c in docs[i]["chunks"]]
        if annotated and annotation_dropout:
            keep = [drop.random() >= annotation_dropout for _ in chunks]
            n_dropped += sum(bool(t) and not k for (t, _), k in zip(chunks, keep))
            chunks = [(t if k else [], x) for (t, x), k in zip(chunks, keep)]
        ids = encode_document(tokenizer, chunks, annotated)
        stream += ids
        if annotated:
            n_ann += len(ids) - len(encode_document(tokenizer, chunks, False))
    n = len(stream) // seq_len
    blocks = [stream[k * seq_len : (k + 1) * seq_len] for k in range(n)]
    ds = Dataset.from_dict({"input_ids": blocks})
    ds.save_to_disk(str(out_dir))
    # the same blocks as one array, for machines without `datasets` (anchorlm.data.shards.load_blocks)
    np.save(
        Path(out_dir) / "blocks.npy", np.asarray(stream[: n * seq_len], dtype=np.int32).reshape(n, seq_len)
    )
    return write_manifest(
        out_dir,
        "tokenize",
        {"annotated": annotated, "seq_len": seq_len, "seed": seed, "annotation_dropout": annotation_dropout},
        {
            "documents": len(docs),
            "tokens": n * seq_len,
            "blocks": n,
            "annotation_tokens": n_ann,
            "annotations_dropped": n_dropped,
        },
    )


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

    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    files = sorted((Path(annotated_dir) / "shards").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{annotated_dir} has no annotated shards (run `anchorlm annotate` first)")
    jobs = [(str(f), tokenizer_path, annotated, seq_len, str(out), seed, annotation_dropout) for f in files]
    counts = map_shards(_pack_one, jobs, num_proc, f"tokenize ({'annotated' if annotated else 'plain'})")
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
    return load_tokenizer(path)


def _pack_one(job) -> dict:
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
    """Packed blocks from `blocks.npy` files (one, or one per shard), memory-mapped: rows
    {"input_ids": [...]} and the column ["input_ids"] as a `datasets` dataset gives them, without
    needing `datasets` (a bare GPU machine may lack it)."""

    def __init__(self, paths: list[Path]):
        import numpy as np

        self.arrays = [np.load(p, mmap_mode="r") for p in paths]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):
        import numpy as np

        if i == "input_ids":
            return [row.tolist() for a in self.arrays for row in a]
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return {"input_ids": self.arrays[k][i - self.starts[k]].tolist()}


def load_blocks(data_dir: str | Path):
    """The training blocks of `anchorlm tokenize`: one file's, or every shard's, concatenated
    (memory-mapped `blocks.npy`, or the `datasets` copy where an older run wrote no array)."""
    d = Path(data_dir)
    shards = sorted(p for p in (d / "shards").iterdir() if p.is_dir()) if (d / "shards").is_dir() else [d]
    if not shards:
        raise FileNotFoundError(f"{d}/shards holds no tokenised shards")
    if all((p / "blocks.npy").exists() for p in shards):
        return Blocks([p / "blocks.npy" for p in shards])
    from datasets import concatenate_datasets, load_from_disk

    parts = [load_from_disk(str(p)) for p in shards]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)
