"""Stage 3: tokenize annotated documents into fixed-length blocks for pretraining.

`plain` drops the annotations; `annotated` interleaves them (`<z1> x1 <z2> x2 ...`). Documents are
shuffled with the seed, joined with EOS and cut into `seq_len` blocks, saved as a `datasets` dataset.
"""

from __future__ import annotations

import random
from pathlib import Path

from tqdm.auto import tqdm

from anchorlm.format import encode_document
from anchorlm.manifest import write_manifest


def pack(docs: list[dict], tokenizer, annotated: bool, seq_len: int, out_dir: str | Path, seed: int = 0):
    from datasets import Dataset

    docs = list(docs)  # one file's or one shard's documents
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    n_ann = 0
    for i in tqdm(order, desc=f"tokenize ({'annotated' if annotated else 'plain'})", unit="doc"):
        chunks = [(c["tags"], c["text"]) for c in docs[i]["chunks"]]
        ids = encode_document(tokenizer, chunks, annotated)
        stream += ids
        if annotated:
            n_ann += len(ids) - len(encode_document(tokenizer, chunks, False))
    n = len(stream) // seq_len
    blocks = [stream[k * seq_len : (k + 1) * seq_len] for k in range(n)]
    ds = Dataset.from_dict({"input_ids": blocks})
    ds.save_to_disk(str(out_dir))
    return write_manifest(
        out_dir,
        "tokenize",
        {"annotated": annotated, "seq_len": seq_len, "seed": seed},
        {"documents": len(docs), "tokens": n * seq_len, "blocks": n, "annotation_tokens": n_ann},
    )
