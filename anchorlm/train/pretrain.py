"""Stage 4: pretrain a causal LM from scratch (or continue one) on packed blocks.

Plain and annotated variants train on the same token budget: `token_budget // (batch * seq_len)`
steps each, so annotation tokens replace content tokens at equal compute, as in the paper.
"""

from __future__ import annotations

import json
from pathlib import Path

from anchorlm.config import PretrainConfig, to_dict
from anchorlm.data.pack import load_blocks
from anchorlm.manifest import write_manifest
from anchorlm.models import load_tokenizer
from anchorlm.train.loop import claim_run, identity_of, train
from anchorlm.train.model import build_model, non_embedding_params


def collate_blocks(rows):
    import torch

    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


def pretrain(
    cfg: PretrainConfig,
    data_dir: str | Path,
    tokenizer_dir: str | Path | None,
    out_dir: str | Path,
    callbacks=(),
) -> dict:
    """Train on the blocks in `data_dir`; the model is saved to `out_dir`. Returns the manifest.

    A fresh model is built from `cfg.model`, or, with `cfg.init_from` (any model spec of
    `anchorlm.models`: a directory, a GGUF file, 'smollm2', a hub id), that model continues, its
    annotation tokens added when the blocks are annotated (plain blocks leave its vocabulary as it
    is); then `tokenizer_dir` may be None (the model's own tokenizer)."""
    if not tokenizer_dir and not cfg.init_from:
        raise ValueError("pretrain needs a tokenizer (--tokenizer) or a model to continue (init_from)")
    inputs = {"data": identity_of(data_dir), "tokenizer": identity_of(tokenizer_dir or cfg.init_from)}
    done = claim_run(out_dir, "pretrain", to_dict(cfg), inputs)
    if done:
        return done
    from transformers import set_seed

    # plain continued pretraining keeps a published model's vocabulary: annotation rows that no
    # training step ever sees would only take probability mass from real tokens
    annotated = _annotated(data_dir)
    tok = load_tokenizer(str(tokenizer_dir or cfg.init_from), tokens="annotations" if annotated else "turns")
    ds = load_blocks(data_dir)
    if len(ds[0]["input_ids"]) != cfg.seq_len:
        raise ValueError(
            f"{data_dir} holds blocks of {len(ds[0]['input_ids'])} tokens but "
            f"pretrain.seq_len is {cfg.seq_len}; re-run the tokenize stage"
        )
    set_seed(cfg.seed)
    model = build_model(cfg.model, tok, cfg.init_from, add_tokens=annotated)
    steps = cfg.token_budget // (cfg.batch_size * cfg.seq_len)
    losses = train(model, tok, ds, collate_blocks, out_dir, cfg, steps, callbacks)
    return write_manifest(
        out_dir,
        "pretrain",
        to_dict(cfg),
        {
            "steps": steps,
            "tokens": steps * cfg.batch_size * cfg.seq_len,
            "blocks_available": len(ds),
            "epochs": round(steps * cfg.batch_size / len(ds), 3),
            "non_embedding_params": non_embedding_params(model),
            **losses,
        },
    )


def _annotated(data_dir: str | Path) -> bool:
    """Whether `anchorlm tokenize` wrote annotated blocks into `data_dir` (its manifest says; data
    without a manifest counts as annotated, which only means the tokens are added)."""
    m = Path(data_dir) / "manifest.json"
    return bool(json.loads(m.read_text())["config"].get("annotated", True)) if m.exists() else True
