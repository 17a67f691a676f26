"""Export anchorlm's SFT data for TRL's `SFTTrainer`, with the same loss masking.

prompt-completion  {"prompt": str, "completion": str}: the prompt is the rendered chat prompt
                   and, for `anchored`, the annotation ``<|ann|>tags<|/ann|>``; the completion is
                   the response and the EOS. TRL's completion-only loss (its default for this
                   form) then masks the prompt and the annotation, which is the anchored method.
                   Value-only masking (`posttrain.value_mask_fraction`) cannot be written in this
                   form: every example masks its whole annotation.
labels             {"input_ids": [...], "labels": [...]}: pre-tokenised with anchorlm's own
                   masking (value-only examples included), -100 where no loss; TRL uses the
                   labels as they are.

Texts are sanitised as in training, so neither instruction nor response can forge a token when
TRL tokenises the strings with special tokens recognised.
"""

from __future__ import annotations

from pathlib import Path

from anchorlm.config import PosttrainConfig
from anchorlm.data.examples import build_dataset
from anchorlm.data.sft import check_examples
from anchorlm.format import encode_annotation, encode_prompt, sanitize
from anchorlm.io import write_jsonl

FORMS = ("prompt-completion", "labels")


def trl_rows(tok, examples: list[dict], cfg: PosttrainConfig, form: str) -> list[dict]:
    """TRL rows for `examples` ({instruction, response, tags}) with `cfg.method`'s masking."""
    if form not in FORMS:
        raise ValueError(f"TRL form must be one of {FORMS}, not {form!r}")
    if form == "labels":
        return build_dataset(tok, examples, cfg)[0]
    rows = []
    for i, ex in enumerate(examples):
        if cfg.method == "anchored" and not ex.get("tags"):
            raise ValueError(f"SFT example {i + 1} has no tags; anchored post-training needs them")
        ids = encode_prompt(tok, ex["instruction"])
        if cfg.method == "anchored":
            ids += encode_annotation(tok, ex["tags"])[0]
        rows.append(
            {
                "prompt": tok.decode(ids, skip_special_tokens=False),
                "completion": sanitize(ex["response"]) + tok.eos_token,
            }
        )
    return rows


def export_trl(tok, examples: list[dict], cfg: PosttrainConfig, form: str, out_path: str | Path) -> int:
    """Write the TRL rows as JSONL (load with `datasets.load_dataset("json", data_files=...)`)."""
    check_examples(examples, anchored=cfg.method == "anchored")
    rows = trl_rows(tok, examples, cfg, form)  # in the order given: TRL's trainer shuffles
    return write_jsonl(out_path, rows)
