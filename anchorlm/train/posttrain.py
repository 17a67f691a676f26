"""Stage 5: post-train on SFT data, with `sft` or `anchored` masking.

sft       prompt || response                loss on the response only
anchored  prompt || annotation || response  loss masked on the prompt and the annotation, so SFT
          teaches the writer Q*(y|x,z) and leaves the plan distribution R(z|x) as pretraining made
          it. In a `value_mask_fraction` of examples only the tag values are masked: the keys and
          delimiters stay in the loss and the model keeps the tag syntax.

Two baselines from the diversity literature work with either method: `loss: gem` replaces the
cross-entropy with GEM (anchorlm.train.gem), and `replay_fraction` mixes pretraining text, trained as
plain language modelling, into the SFT data.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from anchorlm.config import PosttrainConfig, to_dict
from anchorlm.data.sft import check_examples
from anchorlm.format import encode_annotation, encode_prompt, encode_text, eos_id
from anchorlm.manifest import write_manifest

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
    for ex in examples:
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


def posttrain(
    cfg: PosttrainConfig,
    model_dir: str | Path,
    examples: list[dict],
    out_dir: str | Path,
    callbacks=(),
    replay: list[dict] = (),
    where: str = "SFT data",
) -> dict:
    """Post-train the model `model_dir` (a directory or any model spec of `anchorlm.models`) on
    `examples`, plus pretraining chunks of `replay` ({text, tags}) when `cfg.replay_fraction` (as
    plain text) or `cfg.anchored_replay` (as instruction rows) is set; saves to `out_dir`.
    Returns the manifest."""
    from transformers import set_seed

    from anchorlm.models import load_lm
    from anchorlm.train.gem import gem_loss_func
    from anchorlm.train.loop import train

    check_examples(examples, where, anchored=cfg.method == "anchored")
    set_seed(cfg.seed)
    # any model spec; `anchored` adds the annotation tokens if it lacks them, `sft` adds none, so a
    # published model post-trained with sft keeps its vocabulary (added rows would take probability mass)
    model, tok = load_lm(str(model_dir), add_tokens=cfg.method == "anchored")
    rows, n_value_only = build_dataset(tok, examples, cfg)
    n_sft = len(rows)
    n_replay = round(cfg.replay_fraction * n_sft)
    rows += replay_rows(tok, [c["text"] for c in replay], n_replay, cfg)
    n_anchored = round(cfg.anchored_replay * n_sft)
    tagged = [c for c in replay if c.get("tags")]
    rows += anchored_replay_rows(tok, tagged, sorted({e["instruction"] for e in examples}), n_anchored, cfg)
    steps = max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    losses = train(
        model,
        tok,
        rows,
        PadCollator(tok.pad_token_id),
        out_dir,
        max_steps=steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        warmup_ratio=0.05,
        save_steps=max(steps // 4, 10),
        logging_steps=max(steps // 10, 1),
        report_to=cfg.report_to,
        callbacks=callbacks,
        precision=cfg.precision,
        lora=cfg.lora,
        compute_loss_func=gem_loss_func(cfg.gem_beta) if cfg.loss == "gem" else None,
    )
    return write_manifest(
        out_dir,
        "posttrain",
        {**to_dict(cfg), "init": str(model_dir)},
        {
            "examples": n_sft,
            "replayed": n_replay,
            "anchored_replayed": n_anchored,
            "dropped_too_long": len(examples) - n_sft,
            "steps": steps,
            "value_only_examples": n_value_only,
            **losses,
        },
    )
