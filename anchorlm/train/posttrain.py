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
from pathlib import Path

from anchorlm.config import PosttrainConfig, to_dict
from anchorlm.data.examples import PadCollator, anchored_replay_rows, build_dataset, replay_rows
from anchorlm.data.sft import check_examples
from anchorlm.manifest import write_manifest
from anchorlm.models import load_model
from anchorlm.train.gem import gem_loss_func
from anchorlm.train.loop import claim_run, identity_of, train


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

    check_examples(examples, where, anchored=cfg.method == "anchored")
    inputs = {"model": identity_of(model_dir), "examples": _digest(examples), "replay": _digest(list(replay))}
    done = claim_run(out_dir, "posttrain", to_dict(cfg), inputs)
    if done:
        return done
    set_seed(cfg.seed)
    # any model spec; `anchored` adds the annotation tokens if it lacks them, `sft` adds none, so a
    # published model post-trained with sft keeps its vocabulary (added rows would take probability mass)
    model, tok = load_model(str(model_dir), tokens="annotations" if cfg.method == "anchored" else "turns")
    rows, n_value_only = build_dataset(tok, examples, cfg)
    n_sft = len(rows)
    n_replay = round(cfg.replay_fraction * n_sft)
    rows += replay_rows(tok, [c["text"] for c in replay], n_replay, cfg)
    n_anchored = round(cfg.anchored_replay * n_sft)
    tagged = [c for c in replay if c.get("tags")]
    rows += anchored_replay_rows(tok, tagged, sorted({e["instruction"] for e in examples}), n_anchored, cfg)
    steps = max(1, math.ceil(cfg.epochs * len(rows) / cfg.batch_size))
    loss_func = gem_loss_func(cfg.gem_beta) if cfg.loss == "gem" else None
    losses = train(model, tok, rows, PadCollator(tok.pad_token_id), out_dir, cfg, steps, callbacks, loss_func)
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


def _digest(rows: list[dict]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
