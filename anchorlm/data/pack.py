"""Stage 3: tokenize annotated documents into fixed-length blocks for pretraining.

`plain` drops the annotations; `annotated` interleaves them (`<z1> x1 <z2> x2 ...`). Documents are
shuffled with the seed, joined with EOS and cut into `seq_len` blocks, saved as a `datasets` dataset.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from anchorlm.format import encode_document
from anchorlm.manifest import write_manifest


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
