"""Stage 6: draw N samples per prompt, plain or anchored, with batched KV-cached generation.

Anchored sampling opens the annotation (``<|assistant|><|ann|>``), lets the model write its own
plan until ``<|/ann|>`` (closing it after `max_annotation_tokens` if the model does not), then
writes the response conditioned on it. The annotation is stripped from the response and saved
beside it; `annotation_ok` records whether the model closed a well-formed annotation itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from anchorlm.config import SampleConfig
from anchorlm.format import (
    ANN_CLOSE,
    ANN_OPEN,
    EOS,
    SPECIAL_TOKENS,
    encode_prompt,
    parse_tags,
    strip_annotations,
)


def _generate(model, tok, seqs: list[list[int]], max_new: int, stop: list[int], cfg: SampleConfig):
    """Left-padded batched sampling; returns the new tokens of each row, cut at its first stop."""
    import torch

    n = max(map(len, seqs))
    ids = torch.full((len(seqs), n), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, n - len(s) :] = torch.tensor(s)
        mask[i, n - len(s) :] = 1
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
        )
    rows = []
    for row in out[:, n:].tolist():
        cut = next((k for k, t in enumerate(row) if t in stop), None)
        rows.append((row[:cut], row[cut] if cut is not None else None))
    return rows


def _clean(tok, ids: list[int]) -> str:
    text = strip_annotations(tok.decode(ids, skip_special_tokens=False))
    for t in SPECIAL_TOKENS:
        text = text.replace(t, "")
    return text.strip()


def sample(
    cfg: SampleConfig, model_dir: str | Path, prompts: list[dict], out_path: str | Path, anchored: bool
) -> list[dict]:
    """Sample `cfg.n_samples` responses for each prompt ({id, prompt}) and each seed; write JSONL."""
    import torch
    from transformers import AutoModelForCausalLM

    from anchorlm.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    t = tok.convert_tokens_to_ids
    open_id, close_id, eos_id = t(ANN_OPEN), t(ANN_CLOSE), t(EOS)
    batches = []  # batches never mix seeds, so each seed's samples depend on that seed alone
    for seed in cfg.seeds:
        jobs = [(seed, p, k) for p in prompts for k in range(cfg.n_samples)]
        batches += [jobs[s : s + cfg.batch_size] for s in range(0, len(jobs), cfg.batch_size)]
    results = []
    bar = tqdm(
        total=sum(map(len, batches)), desc=f"sample ({'anchored' if anchored else 'plain'})", unit="sample"
    )
    for i, batch in enumerate(batches):
        if i == 0 or batch[0][0] != batches[i - 1][0][0]:
            torch.manual_seed(batch[0][0])
        seqs = [encode_prompt(tok, p["prompt"]) for _, p, _ in batch]
        anns = [None] * len(batch)
        if anchored:
            gen = _generate(
                model, tok, [q + [open_id] for q in seqs], cfg.max_annotation_tokens, [close_id, eos_id], cfg
            )
            anns = [(ids, stop == close_id) for ids, stop in gen]
            seqs = [q + [open_id] + ids + [close_id] for q, (ids, _) in zip(seqs, anns)]
        gen = _generate(model, tok, seqs, cfg.max_new_tokens, [eos_id], cfg)
        for (seed, p, k), (ids, stop), ann in zip(batch, gen, anns):
            row = {
                "prompt_id": p["id"],
                "prompt": p["prompt"],
                "seed": seed,
                "index": k,
                "response": _clean(tok, ids),
                "n_tokens": len(ids),
                "finished": stop is not None,
            }
            if ann is not None:
                raw = tok.decode(ann[0], skip_special_tokens=False).strip()
                tags = parse_tags(raw)
                row.update(annotation=tags, annotation_raw=raw, annotation_ok=bool(ann[1] and tags))
            results.append(row)
        bar.update(len(batch))
    bar.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")  # the file appears only when complete
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return results
