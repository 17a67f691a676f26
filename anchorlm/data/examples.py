"""SFT tokenisation and masking: the rows post-training (anchorlm.train.posttrain), the TRL export
(anchorlm.data.trl) and GEM (anchorlm.train.gem) train on.

sft       prompt || response                loss on the response only
anchored  prompt || annotation || response  loss masked on the prompt and the annotation; in a
          `value_mask_fraction` of examples only the tag values are masked, so the keys and
          delimiters stay in the loss and the model keeps the tag syntax
replay    pretraining chunks as plain text, full loss (`replay_fraction`), or as instruction rows
          masked like SFT examples (`anchored_replay`)
"""

from __future__ import annotations

import random

from anchorlm.config import PosttrainConfig
from anchorlm.format import encode_annotation, encode_prompt, encode_text, eos_id

IGNORE = -100


def build_example(tok, ex: dict, method: str, value_only: bool = False, mask_annotation: bool = True) -> dict:
    """input_ids and labels (IGNORE where no loss) for one SFT example."""
    prompt = encode_prompt(tok, ex["instruction"])
    resp = encode_text(tok, ex["response"]) + [eos_id(tok)]
    ids, labels = list(prompt), [IGNORE] * len(prompt)
    if method == "anchored":
        ann, is_value = encode_annotation(tok, ex["tags"])
        if not mask_annotation:
            ann_labels = list(ann)
        elif value_only:
            ann_labels = [IGNORE if v else i for i, v in zip(ann, is_value)]
        else:
            ann_labels = [IGNORE] * len(ann)
        ids += ann
        labels += ann_labels
    return {"input_ids": ids + resp, "labels": labels + resp}


def build_dataset(tok, examples: list[dict], cfg: PosttrainConfig) -> tuple[list[dict], int]:
    """Tokenised examples (over-long ones dropped) and how many had value-only masking."""
    rng = random.Random(cfg.seed)
    rows, n_value_only = [], 0
    constant = cfg.constant_annotation.split() if cfg.constant_annotation else None
    for ex in examples:
        if constant:
            ex = {**ex, "tags": constant}
        value_only = cfg.method == "anchored" and rng.random() < cfg.value_mask_fraction
        row = build_example(tok, ex, cfg.method, value_only, cfg.mask_annotation)
        if len(row["input_ids"]) <= cfg.max_len:
            rows.append(row)
            n_value_only += value_only
    if not rows:
        raise ValueError(f"every SFT example is longer than posttrain.max_len={cfg.max_len} tokens")
    return rows, n_value_only


def anchored_replay_rows(tok, chunks: list[dict], instructions: list[str], n: int, cfg: PosttrainConfig):
    """`n` annotated pretraining chunks ({text, tags}, drawn seeded) as post-training rows: a random
    instruction of the SFT data, the chunk's annotation and its text (cut to `replay_max_chars`),
    masked as `cfg.method` masks SFT examples (anchored: loss on the text only; sft: no annotation)."""
    if n and not (chunks and instructions):
        raise ValueError("posttrain.anchored_replay > 0 needs annotated pretraining chunks to replay")
    rng = random.Random(cfg.seed + 2)
    rows = []
    while len(rows) < n:
        c = chunks[rng.randrange(len(chunks))]
        ex = {
            "instruction": rng.choice(instructions),
            "response": c["text"][: cfg.replay_max_chars],
            "tags": c["tags"],
        }
        row = build_example(tok, ex, cfg.method, mask_annotation=cfg.mask_annotation)
        if len(row["input_ids"]) <= cfg.max_len:
            rows.append(row)
    return rows


def replay_rows(tok, texts: list[str], n: int, cfg: PosttrainConfig) -> list[dict]:
    """`n` pretraining chunks drawn from `texts` (seeded), each trained as plain text: full loss."""
    if n and not texts:
        raise ValueError("posttrain.replay_fraction > 0 needs pretraining texts to replay")
    rng = random.Random(cfg.seed + 1)
    eos = eos_id(tok)
    rows = []
    for _ in range(n):
        ids = (encode_text(tok, texts[rng.randrange(len(texts))][: cfg.replay_max_chars]) + [eos])[
            : cfg.max_len
        ]
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


class PadCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
