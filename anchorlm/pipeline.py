"""The whole path in one call: annotate -> tokenizer -> tokenize -> pretrain (plain, annotated)
-> SFT data -> post-train (sft, anchored) -> sample (base, sft, aat) -> evaluate -> report.

Each stage writes its own directory under `out_dir` and is skipped when its output is complete,
so an interrupted demo continues where it stopped (training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from anchorlm.config import PipelineConfig, to_dict
from anchorlm.io import claim_dir, lock_dir
from anchorlm.manifest import is_done
from anchorlm.variants import REGISTRY

# the demo's variants (anchorlm.variants says what each is); each samples its own model, models/<name>.
# `annotated`, before post-training, shows the plans and the writer AAT starts from.
VARIANTS = ("base", "sft", "aat", "annotated")


# Stages whose outputs are reused on a rerun; `evaluate` always runs again, so it may change.
REUSED_SECTIONS = ("corpus", "annotate", "tokenizer", "pretrain", "sft_data", "posttrain", "sample")


def _check_same_config(out: Path, cfg: PipelineConfig) -> None:
    """Refuse to finish a run in `out` that was started with another config: its finished stages
    would be reused silently."""
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(to_dict(cfg)))
    changed = [k for k in REUSED_SECTIONS if old.get(k) != new.get(k)]
    if changed:
        raise ValueError(
            f"{out} holds a run made with another config (changed: {', '.join(changed)}); "
            "use a new --out or delete that directory"
        )


def _log(msg: str) -> None:
    print(f"[anchorlm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(cfg: PipelineConfig, out: Path) -> None:
    """The shared data stages (annotate, tokenizer, tokenize plain and annotated, SFT data), each
    skipped when complete; a sharded corpus stays sharded (streamed, packed shard by shard). When
    `pretrain.init_from` names a published model, its own tokenizer packs the blocks and no
    tokenizer is trained."""
    from anchorlm.annotate import annotate_corpus, iter_annotated
    from anchorlm.data.pack import tokenize_corpus
    from anchorlm.data.sft import build_sft_data
    from anchorlm.tokenizer import train_tokenizer

    _log("annotate")
    annotate_corpus(cfg.corpus, cfg.annotate, out / "annotate")  # resumes; no-op when complete
    tok = cfg.pretrain.init_from or str(out / "tokenizer")
    if not cfg.pretrain.init_from and not is_done(out / "tokenizer"):
        _log("train tokenizer")
        train_tokenizer(iter_annotated(out / "annotate"), cfg.tokenizer, out / "tokenizer")
    p = cfg.pretrain
    for variant in ("plain", "annotated"):
        if not is_done(out / "tokens" / variant):
            _log(f"tokenize ({variant})")
            tokenize_corpus(out / "annotate", tok, variant == "annotated", p.seq_len, out / "tokens" / variant,
                            p.seed, p.annotation_dropout, cfg.annotate.num_proc)  # fmt: skip
    if not is_done(out / "sft_data"):
        _log("build SFT data")
        build_sft_data(cfg.corpus, cfg.annotate, out / "annotate", cfg.sft_data, out / "sft_data")


def replay_chunks(annotate_dir: str | Path) -> list[dict]:
    """Every annotated chunk ({text, tags}): what replay in post-training draws from."""
    from anchorlm.annotate import iter_annotated

    return [c for d in iter_annotated(annotate_dir) for c in d["chunks"]]


def run_pipeline(cfg: PipelineConfig, reuse_dir: bool = False) -> dict:
    """Run (or finish) every stage; returns the results dict also written to out_dir/results.json.
    `reuse_dir`: write into a non-empty directory that anchorlm did not make."""

    out = claim_dir(cfg.out_dir, "demo", reuse_dir)
    with lock_dir(out):  # a second demo into the same directory stops instead of writing beside this one
        return _run_pipeline(cfg, out)


def _run_pipeline(cfg: PipelineConfig, out: Path) -> dict:
    from anchorlm.evaluate import evaluate
    from anchorlm.io import read_jsonl
    from anchorlm.report import write_report
    from anchorlm.sample import forced_prompts, sample
    from anchorlm.train.posttrain import posttrain
    from anchorlm.train.pretrain import pretrain

    _check_same_config(out, cfg)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    t0 = time.time()

    prepare(cfg, out)
    for variant, model in (("plain", "base"), ("annotated", "annotated")):
        if not is_done(out / "models" / model):
            _log(f"pretrain ({variant})")
            tok_dir = None if cfg.pretrain.init_from else out / "tokenizer"
            pretrain(cfg.pretrain, out / "tokens" / variant, tok_dir, out / "models" / model)
    examples = read_jsonl(out / "sft_data" / "train.jsonl")
    prompts = read_jsonl(out / "sft_data" / "eval_prompts.jsonl")
    p = cfg.posttrain
    chunks = replay_chunks(out / "annotate") if p.replay_fraction or p.anchored_replay else []
    for method, init, name in (("sft", "base", "sft"), ("anchored", "annotated", "aat")):
        if not is_done(out / "models" / name):
            _log(f"post-train ({method})")
            pcfg = dataclasses.replace(cfg.posttrain, method=method)
            posttrain(pcfg, out / "models" / init, examples, out / "models" / name, replay=chunks)
    samples, forced = {}, {}
    for variant in VARIANTS:
        model, anchored = variant, REGISTRY[variant].anchored
        samples[variant] = out / "samples" / f"{variant}.jsonl"
        if not samples[variant].exists():
            _log(f"sample ({variant})")
            sample(cfg.sample, out / "models" / model, prompts, samples[variant], anchored)
        if anchored and cfg.sample.forced_topics:  # anchor fidelity: is a given plan followed?
            forced[variant] = out / "samples" / f"{variant}.forced.jsonl"
            if not forced[variant].exists():
                _log(f"sample ({variant}, forced topics)")
                fcfg = dataclasses.replace(cfg.sample, n_samples=cfg.sample.forced_samples)
                sample(fcfg, out / "models" / model, forced_prompts(prompts, cfg.sample.forced_topics),
                       forced[variant], True)  # fmt: skip
    _log("evaluate")
    results = evaluate(
        cfg.evaluate, cfg.sft_data, cfg.corpus, samples, out / "eval" / "metrics.json", forced=forced
    )
    minutes = round((time.time() - t0) / 60, 2)
    results["pipeline"] = {"minutes_this_invocation": minutes, "out_dir": str(out)}
    results["made_by"] = made_by(out)
    table = write_report(results, out, title=f"anchorlm demo ({out})")
    _log(f"done in {minutes} min; report: {out / 'report.md'}")
    print(table)
    return results


def made_by(out: Path) -> dict:
    """{stage: {machine, precision}} from the manifests of the demo's models and samples, so its
    report says where and in what precision each was made (a resumed demo may span machines)."""
    found = {}
    for kind, pattern in (("train", "models/*/manifest.json"), ("sample", "samples/*.manifest.json")):
        for path in sorted(out.glob(pattern)):
            m = json.loads(path.read_text())
            name = path.parent.name if kind == "train" else path.name.removesuffix(".manifest.json")
            found[f"{kind} {name}"] = {"machine": m.get("machine"), "precision": m["counts"].get("precision")}
    return found
